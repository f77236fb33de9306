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

// Indexes into queue (ascending) of the requests to admit now; raises `overtaken` of every
// request that a later admitted one passed.
std::vector<size_t> PickAdmissions(std::vector<QueuedRows>& queue, int running_rows, int max_batch_rows,
                                   int max_overtakes);

}  // namespace spritediff
