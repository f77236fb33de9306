// The admission rule alone: arrival order, overtaking of a request that does not fit, and the
// bound on overtaking (after max_overtakes nothing passes it, so it cannot starve).
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

}  // namespace
}  // namespace spritediff
