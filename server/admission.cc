#include "server/admission.h"

namespace spritediff {

std::vector<size_t> PickAdmissions(std::vector<QueuedRows>& queue, int running_rows, int max_batch_rows,
                                   int max_overtakes) {
  std::vector<size_t> admit;
  std::vector<size_t> skipped;  // requests that did not fit, in queue order
  for (size_t i = 0; i < queue.size(); ++i) {
    const bool fits = running_rows == 0 || running_rows + queue[i].rows <= max_batch_rows;
    if (!fits) {
      if (queue[i].overtaken >= max_overtakes) break;  // nothing may pass it any more
      skipped.push_back(i);
      continue;
    }
    bool may_pass = true;
    for (size_t s : skipped) may_pass = may_pass && queue[s].overtaken < max_overtakes;
    if (!may_pass) break;
    for (size_t s : skipped) ++queue[s].overtaken;
    running_rows += queue[i].rows;
    admit.push_back(i);
  }
  return admit;
}

}  // namespace spritediff
