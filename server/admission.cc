#include "server/admission.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <queue>
#include <utility>

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

double EstimateWaitForPlace(const std::vector<RowsAndSteps>& running, const std::vector<RowsAndSteps>& queued,
                            int rows, int fill_rows, double step_s) {
  using Ending = std::pair<int64_t, int>;  // (the step after which rows are free, rows)
  std::priority_queue<Ending, std::vector<Ending>, std::greater<>> endings;
  int occupied = 0;
  for (const RowsAndSteps& r : running) {
    endings.push({std::max(r.steps_left, 0), r.rows});
    occupied += r.rows;
  }
  int64_t now = 0;  // in steps
  auto wait_for_place = [&](int need) {
    while (occupied > 0 && occupied + need > fill_rows && !endings.empty()) {
      now = std::max(now, endings.top().first);
      occupied -= endings.top().second;
      endings.pop();
    }
  };
  for (const RowsAndSteps& q : queued) {
    wait_for_place(q.rows);
    occupied += q.rows;
    endings.push({now + std::max(q.steps_left, 0), q.rows});
  }
  wait_for_place(rows);
  return static_cast<double>(now) * step_s;
}

}  // namespace spritediff
