// The admission rule alone: arrival order, overtaking of a request that does not fit, and the
// bound on overtaking (after max_overtakes nothing passes it, so it cannot starve); and the wait
// for a place that max_queue_wait_s is compared with.
#include <gtest/gtest.h>

#include "server/admission.h"

namespace spritediff {
namespace {

std::vector<QueuedRows> Queue(std::initializer_list<int> rows) {
  std::vector<QueuedRows> q;
  for (int r : rows) q.push_back({r, 0});
  return q;
}

TEST(Admission, TakesRequestsInArrivalOrderWhileRowsAreFree) {
  auto q = Queue({2, 3, 1, 4});
  // 8 rows, 0 running: 2 + 3 + 1 fit (6), the 4 does not (10 > 8).
  EXPECT_EQ(PickAdmissions(q, 0, 8, 4), (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(q[3].overtaken, 0);  // nothing after it was admitted
}

TEST(Admission, AnEmptyBatchTakesARequestLargerThanTheFreeRows) {
  auto q = Queue({12, 1});
  // Nothing is running, so the 12-row request runs alone; the 1 then does not fit (13 > 8).
  EXPECT_EQ(PickAdmissions(q, 0, 8, 4), (std::vector<size_t>{0}));
}

TEST(Admission, SmallerRequestsOvertakeOneThatDoesNotFit) {
  auto q = Queue({6, 1, 1});
  // 4 of 8 rows are running: the 6 waits, the two 1s pass it and it counts both overtakes.
  EXPECT_EQ(PickAdmissions(q, 4, 8, 4), (std::vector<size_t>{1, 2}));
  EXPECT_EQ(q[0].overtaken, 2);
}

TEST(Admission, OvertakingIsBoundedSoTheBigRequestIsNotStarved) {
  const int max_overtakes = 3;
  std::vector<QueuedRows> q = {{6, 0}};
  int overtakes_seen = 0;
  // Step after step a new 1-row request arrives while 4 rows keep running: it may pass the
  // 6-row request only max_overtakes times in all.
  for (int step = 0; step < 10; ++step) {
    q.push_back({1, 0});
    std::vector<size_t> picks = PickAdmissions(q, 4, 8, max_overtakes);
    for (auto it = picks.rbegin(); it != picks.rend(); ++it) {
      EXPECT_NE(*it, 0u) << "the 6-row request cannot fit next to 4 running rows";
      q.erase(q.begin() + static_cast<std::ptrdiff_t>(*it));
      ++overtakes_seen;
    }
  }
  EXPECT_EQ(overtakes_seen, max_overtakes);
  EXPECT_EQ(q.front().rows, 6);
  EXPECT_EQ(q.front().overtaken, max_overtakes);
  // Once the running rows drain it is taken first; the waiting 1s follow in order if they fit.
  const size_t waiting = q.size() - 1;
  std::vector<size_t> picks = PickAdmissions(q, 0, 8, max_overtakes);
  ASSERT_FALSE(picks.empty());
  EXPECT_EQ(picks.front(), 0u);
  EXPECT_EQ(picks.size(), 1 + std::min<size_t>(waiting, 2));  // 6 + 1 + 1 = 8 rows
}

TEST(Admission, ZeroOvertakesMeansStrictArrivalOrder) {
  auto q = Queue({6, 1});
  EXPECT_TRUE(PickAdmissions(q, 4, 8, 0).empty());
}

// Worked by hand: steps of 0.1 s, a batch of 4 rows.
TEST(WaitForPlace, RoomNowMeansNoWait) {
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace({{2, 50}}, {}, 2, 4, 0.1), 0.0);
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace({}, {}, 9, 4, 0.1), 0.0);  // an empty batch takes any request
}

TEST(WaitForPlace, WaitsForTheFirstRunningRequestsThatFreeEnoughRows) {
  // 4 rows full: 1 row ends after 3 steps, 2 after 10, 1 after 40. One row needs the first end,
  // three rows the first two.
  const std::vector<RowsAndSteps> running = {{2, 10}, {1, 40}, {1, 3}};
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace(running, {}, 1, 4, 0.1), 0.3);
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace(running, {}, 3, 4, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace(running, {}, 4, 4, 0.1), 4.0);  // all of them
}

TEST(WaitForPlace, QueuedRequestsTakeTheFreedPlacesFirstAndThenRunTheirSteps) {
  // The 1-row place freed after 3 steps goes to the queued request, which then runs 5 steps;
  // the newcomer gets the place it frees (3 + 5 = 8 steps), before the 2 rows end at 10.
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace({{2, 10}, {1, 40}, {1, 3}}, {{1, 5}}, 1, 4, 0.1), 0.8);
  // Two queued 2-row requests: the first takes the rows freed at 3 and 10, the second those
  // freed at 40 (with the first's 2 still running), the newcomer waits for the first to end.
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace({{2, 10}, {1, 40}, {1, 3}}, {{2, 50}, {2, 50}}, 1, 4, 0.1), 6.0);
}

TEST(WaitForPlace, ScalesWithTheStepTime) {
  const std::vector<RowsAndSteps> running = {{4, 25}};
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace(running, {}, 1, 4, 0.02), 0.5);
  EXPECT_DOUBLE_EQ(EstimateWaitForPlace(running, {}, 1, 4, 0.04), 1.0);
}

}  // namespace
}  // namespace spritediff
