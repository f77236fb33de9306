// The batch scheduler's admission rule, as a pure function so that it can be tested alone.
// Requests are taken in arrival order while their rows fit next to the running ones (an empty
// batch takes any request, so one larger than the free rows still runs). A request that does
// not fit may be overtaken by later ones that do, each overtake counted on it; once it has
// been overtaken max_overtakes times nothing passes it any more, so it is admitted as soon as
// the running rows drain. Small requests wait behind a big one for at most that many
// admissions; the big one waits for at most that many plus the drain: no starvation either way.
#pragma once

#include <cstddef>
#include <vector>

namespace spritediff {

struct QueuedRows {
  int rows = 0;
  int overtaken = 0;  // updated by PickAdmissions
};

// A request as the wait estimate sees it: its rows, and the denoising steps it has left (all of
// them for a queued one).
struct RowsAndSteps {
  int rows = 0;
  int steps_left = 0;
};

// Seconds until a request of `rows` rows that arrives now gets a place in the batch: `running`
// free their rows as their last steps end; `queued` (arrival order) are admitted as places within
// fill_rows free (an empty batch takes any request), then run their steps; every step takes
// step_s. Overtaking is left out: it only brings small requests forward, so for them this errs
// long. What max_queue_wait_s is compared with.
double EstimateWaitForPlace(const std::vector<RowsAndSteps>& running, const std::vector<RowsAndSteps>& queued,
                            int rows, int fill_rows, double step_s);

// Indexes into queue (ascending) of the requests to admit now; raises `overtaken` of every
// request that a later admitted one passed.
std::vector<size_t> PickAdmissions(std::vector<QueuedRows>& queue, int running_rows, int max_batch_rows,
                                   int max_overtakes);

}  // namespace spritediff
