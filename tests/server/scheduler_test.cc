// BatchScheduler in-process with a tiny network (n_feat 8): the queue limit, cancel and
// deadline while queued and while running, Stop answering everyone (with the reason it was
// given), and callbacks that throw. Events are ordered by waiting on observable state (the
// scheduler's stats, the callbacks), never by sleeping.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include <filesystem>
#include <unistd.h>

#include "common/image.h"
#include "server/batch_scheduler.h"
#include "server/model_registry.h"

namespace spritediff {
namespace {

using namespace std::chrono_literals;

// A long DDPM chain, so that a request admitted into the batch is still running when the test
// acts on it (cancel, deadline, stop); every such test ends it early.
constexpr int kLongT = 20000;

LoadedModel TinyModel(int timesteps) {
  torch::manual_seed(0);
  LoadedModel m;
  m.info.name = "tiny";
  m.info.arch.n_feat = 8;
  m.info.arch.n_cfeat = 2;
  m.info.arch.height = 16;
  m.info.labels = {"a", "b"};
  m.info.schedule.timesteps = timesteps;
  m.net = ContextUnet(m.info.arch);
  m.net->eval();
  return m;
}

// Records what the scheduler reports for one request.
struct Probe {
  std::mutex mu;
  std::condition_variable cv;
  int done_calls = 0;
  int frames = 0;
  JobOutcome outcome;

  bool WaitDone(std::chrono::seconds timeout = 60s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return done_calls > 0; });
  }
  int DoneCalls() {
    std::lock_guard<std::mutex> lock(mu);
    return done_calls;
  }
};

std::shared_ptr<SampleJob> MakeJob(const std::string& id, int rows, int steps, SamplerKind sampler,
                                   const std::shared_ptr<Probe>& probe) {
  auto job = std::make_shared<SampleJob>();
  job->id = id;
  for (int i = 0; i < rows; ++i) {
    RowSpec spec;
    spec.sampler = sampler;
    spec.steps = steps;
    spec.context = {1.0f, 0.0f};
    spec.seed = 1 + static_cast<uint64_t>(i);
    job->rows.push_back(spec);
  }
  job->on_done = [probe](JobOutcome&& o) {
    std::lock_guard<std::mutex> lock(probe->mu);
    ++probe->done_calls;
    probe->outcome = std::move(o);
    probe->cv.notify_all();
  };
  return job;
}

std::shared_ptr<SampleJob> LongJob(const std::string& id, int rows, const std::shared_ptr<Probe>& probe) {
  return MakeJob(id, rows, kLongT, SamplerKind::kDdpm, probe);
}

// Polls the scheduler's stats until pred holds (the loop publishes them under its lock).
template <typename Pred>
bool WaitStats(const BatchScheduler& s, Pred pred, std::chrono::seconds timeout = 60s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred(s.stats())) return true;
    std::this_thread::sleep_for(1ms);  // not yield: the scheduler thread needs the core
  }
  return false;
}

SchedulerLimits Limits(int max_batch_rows, int max_queued_rows) {
  SchedulerLimits l;
  l.max_batch_rows = max_batch_rows;
  l.max_queued_rows = max_queued_rows;
  l.threads = 1;
  return l;
}

TEST(Scheduler, RunsARequestToTheEndAndAnswersOnce) {
  const LoadedModel m = TinyModel(50);
  BatchScheduler s("tiny", m, torch::kCPU, Limits(8, 16));
  auto probe = std::make_shared<Probe>();
  auto job = MakeJob("r1", 3, 5, SamplerKind::kDdim, probe);
  job->frame_every = 2;
  job->on_frame = [probe](FrameData&& f) {
    std::lock_guard<std::mutex> lock(probe->mu);
    ++probe->frames;
    EXPECT_EQ(f.images.size(), 3u);
  };
  ASSERT_TRUE(s.Submit(job).ok());
  ASSERT_TRUE(probe->WaitDone());
  s.Stop();
  EXPECT_TRUE(probe->outcome.status.ok()) << probe->outcome.status.message();
  EXPECT_EQ(probe->outcome.images.size(), 3u);
  EXPECT_EQ(probe->frames, 5 / 2);  // frames after steps 2 and 4; the 5th step is the result
  EXPECT_EQ(probe->DoneCalls(), 1);
}

// BatchNorm statistics far from the fresh (0, 1), so that folding them changes real weights.
LoadedModel TinyModelWithTrainedLookingNorms(int timesteps) {
  LoadedModel m = TinyModel(timesteps);
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  for (const auto& module : m.net->modules(/*include_self=*/false)) {
    if (auto* bn = module->as<torch::nn::BatchNorm2dImpl>()) {
      bn->running_mean.copy_(torch::randn_like(bn->running_mean) * 0.5);
      bn->running_var.copy_(torch::rand_like(bn->running_var) * 1.5 + 0.5);
      bn->weight.copy_(torch::rand_like(bn->weight) + 0.5);
      bn->bias.copy_(torch::randn_like(bn->bias) * 0.2);
    }
  }
  return m;
}

std::vector<std::string> RunToTheEnd(const LoadedModel& m, bool fold) {
  SchedulerLimits limits = Limits(8, 16);
  limits.fold_batchnorm = fold;
  BatchScheduler s("tiny", m, torch::kCPU, limits);
  auto probe = std::make_shared<Probe>();
  EXPECT_TRUE(s.Submit(MakeJob("fold", 3, 10, SamplerKind::kDdim, probe)).ok());
  EXPECT_TRUE(probe->WaitDone());
  s.Stop();
  EXPECT_TRUE(probe->outcome.status.ok()) << probe->outcome.status.message();
  return probe->outcome.images;
}

TEST(Scheduler, FoldedBatchNormsGiveTheSameSpritesToOneLevel) {
  // Two copies of the same weights: the scheduler folds the network it is given.
  const std::vector<std::string> plain = RunToTheEnd(TinyModelWithTrainedLookingNorms(50), false);
  const std::vector<std::string> folded = RunToTheEnd(TinyModelWithTrainedLookingNorms(50), true);
  ASSERT_EQ(plain.size(), 3u);
  ASSERT_EQ(folded.size(), 3u);
  int max_diff = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    Result<Image> a = DecodePng(plain[i]);
    Result<Image> b = DecodePng(folded[i]);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->pixels.size(), b->pixels.size());
    for (size_t k = 0; k < a->pixels.size(); ++k) max_diff = std::max(max_diff, std::abs(a->pixels[k] - b->pixels[k]));
  }
  // Float reassociation only: at most one 8-bit level where a value sits on a rounding edge.
  EXPECT_LE(max_diff, 1);
}

// A 2-row batch filled by a long request that has run a few steps (so the rate is measured),
// and a long 2-row request queued behind it; then a short 1-row request arrives. Returns how
// Submit answered that last one; the probes see what became of the others.
Status QueueBehindAFullBatch(double max_queue_wait_s, const std::shared_ptr<Probe>& queued,
                             const std::shared_ptr<Probe>& last) {
  const LoadedModel m = TinyModel(kLongT);
  SchedulerLimits limits = Limits(2, 100);
  limits.max_queue_wait_s = max_queue_wait_s;
  BatchScheduler s("tiny", m, torch::kCPU, limits);
  auto running = std::make_shared<Probe>();
  EXPECT_TRUE(s.Submit(LongJob("running", 2, running)).ok());
  EXPECT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 2; }));
  EXPECT_TRUE(s.Submit(LongJob("queued", 2, queued)).ok());  // nothing ahead of it: accepted
  Status answer = s.Submit(MakeJob("last", 1, 5, SamplerKind::kDdim, last));
  s.Stop();
  return answer;
}

TEST(Scheduler, RefusesARequestWhoseEstimatedWaitPassesMaxQueueWait) {
  // 2 rows x 20000 steps queued ahead drain far slower than 1 ms on any machine.
  auto queued = std::make_shared<Probe>(), last = std::make_shared<Probe>();
  const Status busy = QueueBehindAFullBatch(0.001, queued, last);
  EXPECT_EQ(busy.code(), Status::Code::kResourceExhausted) << busy.message();
  EXPECT_NE(busy.message().find("max_queue_wait_s"), std::string::npos) << busy.message();
  EXPECT_EQ(last->DoneCalls(), 0);    // refused at Submit: the caller answers, not on_done
  EXPECT_EQ(queued->DoneCalls(), 1);  // answered by Stop
}

// Below capacity a request that finds the queue empty is admitted whatever the batch holds (on
// a CPU it may join past cpu_batch_rows); within kOverloadWindow of a refusal the estimate also
// holds for it: a full batch of long requests frees no place in time, so it is refused too.
TEST(Scheduler, WhileOverloadedARequestAtAFullBatchIsRefusedEvenWithAnEmptyQueue) {
  const LoadedModel m = TinyModel(kLongT);
  SchedulerLimits limits = Limits(2, 100);
  limits.max_queue_wait_s = 0.001;
  BatchScheduler s("tiny", m, torch::kCPU, limits);
  auto running = std::make_shared<Probe>(), queued = std::make_shared<Probe>(), refused = std::make_shared<Probe>(),
       again = std::make_shared<Probe>();
  ASSERT_TRUE(s.Submit(LongJob("running", 2, running)).ok());
  ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 2; }));
  auto queued_job = LongJob("queued", 2, queued);
  ASSERT_TRUE(s.Submit(queued_job).ok());  // an empty queue, nothing refused yet: admitted to wait
  EXPECT_FALSE(s.stats().overloaded);
  EXPECT_GT(s.stats().step_seconds, 0.0);
  const Status busy = s.Submit(MakeJob("refused", 1, 5, SamplerKind::kDdim, refused));
  ASSERT_EQ(busy.code(), Status::Code::kResourceExhausted) << busy.message();
  EXPECT_TRUE(s.stats().overloaded);
  queued_job->cancelled.store(true);  // the queue empties; the batch stays full
  s.Wake();
  ASSERT_TRUE(queued->WaitDone());
  const Status again_status = s.Submit(MakeJob("again", 1, 5, SamplerKind::kDdim, again));
  EXPECT_EQ(again_status.code(), Status::Code::kResourceExhausted) << again_status.message();
  EXPECT_NE(again_status.message().find("would give this request a place in"), std::string::npos)
      << again_status.message();
  s.Stop();
  EXPECT_EQ(again->DoneCalls(), 0);
}

// A CPU scheduler whose batch fills to cpu_batch_rows, and to 1 row within the overload
// window, that refuses any request with a wait ahead of it (max_queue_wait_s 1 ms).
SchedulerLimits OverloadOfOneRow(int cpu_batch_rows) {
  SchedulerLimits limits = Limits(8, 16);
  limits.cpu_batch_rows = cpu_batch_rows;
  limits.cpu_overload_batch_rows = 1;
  limits.cpu_batch_wait_steps = 0;
  limits.max_queue_wait_s = 0.001;
  return limits;
}

// The wait estimate must forget requests that leave without a step: cancelled ones, when
// nothing else runs, used to stay in it, and an idle daemon within the overload window then
// refused a request bigger than the overload fill because of them (renewing the window).
TEST(Scheduler, RequestsThatLeaveWithoutAStepLeaveTheWaitEstimate) {
  const LoadedModel m = TinyModel(kLongT);
  BatchScheduler s("tiny", m, torch::kCPU, OverloadOfOneRow(2));
  auto running = std::make_shared<Probe>(), queued = std::make_shared<Probe>(), refused = std::make_shared<Probe>(),
       fresh = std::make_shared<Probe>();
  auto running_job = LongJob("running", 2, running), queued_job = LongJob("queued", 1, queued);
  ASSERT_TRUE(s.Submit(running_job).ok());
  ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 2; }));
  ASSERT_TRUE(s.Submit(queued_job).ok());
  ASSERT_EQ(s.Submit(MakeJob("refused", 1, 5, SamplerKind::kDdim, refused)).code(), Status::Code::kResourceExhausted);
  ASSERT_TRUE(s.stats().overloaded);
  running_job->cancelled.store(true);
  queued_job->cancelled.store(true);
  s.Wake();
  ASSERT_TRUE(running->WaitDone());
  ASSERT_TRUE(queued->WaitDone());
  ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 0 && st.queued_rows == 0; }));
  ASSERT_TRUE(s.stats().overloaded);  // still within the window
  // 2 rows > the overload fill of 1: judged by the estimate, which must see an empty batch.
  const Status answer = s.Submit(MakeJob("fresh", 2, 5, SamplerKind::kDdim, fresh));
  ASSERT_TRUE(answer.ok()) << answer.message();
  EXPECT_TRUE(fresh->WaitDone());
  EXPECT_EQ(fresh->DoneCalls(), 1);
  s.Stop();
}

// A request bigger than the overload fill waits for an empty batch whatever the load, so its
// refusal does not put the daemon into overload; a refused request that fits the fill does.
TEST(Scheduler, OnlyRefusalsOfRequestsThatFitTheOverloadFillStartOverload) {
  const LoadedModel m = TinyModel(kLongT);
  BatchScheduler s("tiny", m, torch::kCPU, OverloadOfOneRow(4));
  auto running = std::make_shared<Probe>(), queued = std::make_shared<Probe>(), big = std::make_shared<Probe>(),
       small = std::make_shared<Probe>();
  ASSERT_TRUE(s.Submit(LongJob("running", 3, running)).ok());
  ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 3 && st.steps > 2; }));
  ASSERT_TRUE(s.Submit(LongJob("queued", 2, queued)).ok());  // 3 + 2 > 4: waits
  EXPECT_EQ(s.Submit(MakeJob("big", 2, 5, SamplerKind::kDdim, big)).code(), Status::Code::kResourceExhausted);
  EXPECT_FALSE(s.stats().overloaded);
  EXPECT_EQ(s.Submit(MakeJob("small", 1, 5, SamplerKind::kDdim, small)).code(), Status::Code::kResourceExhausted);
  EXPECT_TRUE(s.stats().overloaded);
  s.Stop();
}

TEST(Scheduler, WithoutMaxQueueWaitOnlyTheRowLimitRefuses) {
  auto queued = std::make_shared<Probe>(), last = std::make_shared<Probe>();
  EXPECT_TRUE(QueueBehindAFullBatch(0, queued, last).ok());  // max_queue_wait_s 0: off
  EXPECT_EQ(last->DoneCalls(), 1);  // queued, then answered by Stop
}

// On a CPU device the batch is filled to cpu_batch_rows, not max_batch_rows: a request that
// would pass it waits while the batch runs, an empty batch still takes one bigger than it, and
// 0 fills to max_batch_rows as before.
TEST(Scheduler, OnACpuTheBatchFillsToCpuBatchRows) {
  const LoadedModel m = TinyModel(kLongT);
  for (int cpu_batch_rows : {2, 0}) {
    SCOPED_TRACE("cpu_batch_rows " + std::to_string(cpu_batch_rows));
    SchedulerLimits limits = Limits(8, 16);
    limits.cpu_batch_rows = cpu_batch_rows;
    limits.cpu_batch_wait_steps = 0;  // always wait for a place (the rule below is tested apart)
    BatchScheduler s("tiny", m, torch::kCPU, limits);
    auto first = std::make_shared<Probe>(), second = std::make_shared<Probe>();
    auto first_job = LongJob("first", 2, first);
    ASSERT_TRUE(s.Submit(first_job).ok());
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 0; }));
    ASSERT_TRUE(s.Submit(LongJob("second", 1, second)).ok());
    const int64_t steps = s.stats().steps;
    ASSERT_TRUE(WaitStats(s, [&](const SchedulerStats& st) { return st.steps >= steps + 3; }));  // admission ran
    const SchedulerStats st = s.stats();
    if (cpu_batch_rows == 2) {
      EXPECT_EQ(st.running_rows, 2);
      EXPECT_EQ(st.queued_rows, 1);
      first_job->cancelled.store(true);  // the batch drains: the waiting request runs
      s.Wake();
      ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& t) { return t.running_rows == 1 && t.queued_rows == 0; }));
    } else {
      EXPECT_EQ(st.running_rows, 3);
      EXPECT_EQ(st.queued_rows, 0);
    }
    s.Stop();
  }
  // With cpu_batch_wait_steps, a request behind a running one that frees no place within that
  // many steps joins the batch at once (up to max_batch_rows), as on a GPU ...
  auto cpu_fill = [] {
    SchedulerLimits limits = Limits(8, 16);
    limits.cpu_batch_rows = 2;
    limits.cpu_batch_wait_steps = 4;
    return limits;
  };
  {
    BatchScheduler s("tiny", m, torch::kCPU, cpu_fill());
    auto first = std::make_shared<Probe>(), second = std::make_shared<Probe>();
    ASSERT_TRUE(s.Submit(LongJob("first", 2, first)).ok());
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 0; }));
    ASSERT_TRUE(s.Submit(LongJob("second", 1, second)).ok());
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 3 && st.queued_rows == 0; }));
    EXPECT_EQ(first->DoneCalls(), 0);  // joined while the first request still ran
    s.Stop();
  }
  // ... but not within kOverloadWindow of a refusal (here max_queued_rows'): past capacity the
  // batch stays at cpu_batch_rows ...
  {
    BatchScheduler s("tiny", m, torch::kCPU, cpu_fill());  // max_queued_rows 16, no max_queue_wait_s
    auto running = std::make_shared<Probe>(), huge = std::make_shared<Probe>(), refused = std::make_shared<Probe>(),
         later = std::make_shared<Probe>();
    ASSERT_TRUE(s.Submit(LongJob("running", 2, running)).ok());
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 2; }));
    auto huge_job = LongJob("huge", 7, huge);  // 2 + 7 > max_batch_rows 8: waits for the empty batch
    ASSERT_TRUE(s.Submit(huge_job).ok());
    EXPECT_EQ(s.Submit(LongJob("refused", 10, refused)).code(), Status::Code::kResourceExhausted);  // 17 > 16
    huge_job->cancelled.store(true);  // the queue empties
    s.Wake();
    ASSERT_TRUE(huge->WaitDone());
    ASSERT_TRUE(s.Submit(LongJob("later", 1, later)).ok());
    const int64_t steps = s.stats().steps;
    ASSERT_TRUE(WaitStats(s, [&](const SchedulerStats& st) { return st.steps >= steps + 3; }));
    EXPECT_EQ(s.stats().running_rows, 2);  // without the refusal it would have joined (3 rows)
    EXPECT_EQ(s.stats().queued_rows, 1);
    s.Stop();
  }
  // ... and with cpu_overload_batch_rows, within that window it fills only to those rows.
  {
    SchedulerLimits limits = Limits(8, 6);
    limits.cpu_batch_rows = 4;
    limits.cpu_overload_batch_rows = 2;
    limits.cpu_batch_wait_steps = 0;
    BatchScheduler s("tiny", m, torch::kCPU, limits);
    auto a = std::make_shared<Probe>(), b = std::make_shared<Probe>(), refused = std::make_shared<Probe>(),
         d = std::make_shared<Probe>();
    auto a_job = LongJob("a", 2, a), b_job = LongJob("b", 1, b);
    ASSERT_TRUE(s.Submit(a_job).ok());
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 0; }));
    ASSERT_TRUE(s.Submit(b_job).ok());  // nothing refused yet: 2 + 1 <= cpu_batch_rows 4, joins
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 3 && st.queued_rows == 0; }));
    EXPECT_EQ(s.Submit(LongJob("refused", 7, refused)).code(), Status::Code::kResourceExhausted);  // 7 > 6 queued
    ASSERT_TRUE(s.Submit(LongJob("d", 1, d)).ok());  // 3 + 1 fits 4 rows, not 2: waits
    int64_t steps = s.stats().steps;
    ASSERT_TRUE(WaitStats(s, [&](const SchedulerStats& st) { return st.steps >= steps + 3; }));
    EXPECT_EQ(s.stats().running_rows, 3);
    EXPECT_EQ(s.stats().queued_rows, 1);
    b_job->cancelled.store(true);  // 2 rows run: 2 + 1 is still past 2
    s.Wake();
    ASSERT_TRUE(b->WaitDone());
    steps = s.stats().steps;
    ASSERT_TRUE(WaitStats(s, [&](const SchedulerStats& st) { return st.steps >= steps + 3; }));
    EXPECT_EQ(s.stats().running_rows, 2);
    EXPECT_EQ(s.stats().queued_rows, 1);
    a_job->cancelled.store(true);  // the batch empties: it runs
    s.Wake();
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 1 && st.queued_rows == 0; }));
    s.Stop();
  }
  // ... one behind a request that ends within them waits: for a place within cpu_batch_rows (a
  // 1-row head), or for the empty batch (a 3-row head, bigger than cpu_batch_rows) ...
  for (int head : {1, 3}) {
    SCOPED_TRACE("head of " + std::to_string(head) + " rows");
    BatchScheduler s("tiny", m, torch::kCPU, cpu_fill());
    auto first = std::make_shared<Probe>(), second = std::make_shared<Probe>();
    ASSERT_TRUE(s.Submit(MakeJob("first", 2, 3, SamplerKind::kDdim, first)).ok());
    ASSERT_TRUE(s.Submit(MakeJob("second", head, 3, SamplerKind::kDdim, second)).ok());
    ASSERT_TRUE(first->WaitDone());
    ASSERT_TRUE(second->WaitDone());
    EXPECT_TRUE(second->outcome.status.ok()) << second->outcome.status.message();
    const SchedulerStats st = s.stats();
    EXPECT_EQ(st.steps, 6);                    // three steps of the first request, then three of the second
    EXPECT_EQ(st.rows_stepped, 6 + 3 * head);  // never 2 + head rows in one step
    s.Stop();
  }
  // ... and a head that would not fit even max_batch_rows raises nothing for those behind it.
  {
    BatchScheduler s("tiny", m, torch::kCPU, cpu_fill());
    auto running = std::make_shared<Probe>(), huge = std::make_shared<Probe>(), small = std::make_shared<Probe>();
    ASSERT_TRUE(s.Submit(LongJob("running", 2, running)).ok());
    ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2 && st.steps > 0; }));
    ASSERT_TRUE(s.Submit(LongJob("huge", 7, huge)).ok());  // 2 + 7 > max_batch_rows 8
    ASSERT_TRUE(s.Submit(LongJob("small", 1, small)).ok());
    const int64_t steps = s.stats().steps;
    ASSERT_TRUE(WaitStats(s, [&](const SchedulerStats& st) { return st.steps >= steps + 3; }));
    EXPECT_EQ(s.stats().running_rows, 2);  // the small one did not pass into a batch past 2 rows
    EXPECT_EQ(s.stats().queued_rows, 8);
    s.Stop();
  }
  // An empty batch takes a request bigger than cpu_batch_rows (up to max_batch_rows).
  SchedulerLimits limits = Limits(8, 16);
  limits.cpu_batch_rows = 2;
  BatchScheduler s("tiny", m, torch::kCPU, limits);
  auto big = std::make_shared<Probe>();
  ASSERT_TRUE(s.Submit(LongJob("big", 6, big)).ok());
  EXPECT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 6 && st.steps > 0; }));
  s.Stop();
  EXPECT_EQ(big->DoneCalls(), 1);
}

TEST(Scheduler, QueueLimitCancelAndDeadlineWhileQueuedAndRunning) {
  const LoadedModel m = TinyModel(kLongT);
  BatchScheduler s("tiny", m, torch::kCPU, Limits(4, 4));
  auto running = std::make_shared<Probe>();
  auto running_job = LongJob("running", 4, running);
  ASSERT_TRUE(s.Submit(running_job).ok());
  ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 4 && st.steps > 0; }));

  // The batch is full: a 3-row request queues, and a 2-row one would pass max_queued_rows.
  auto queued = std::make_shared<Probe>();
  auto queued_job = LongJob("queued", 3, queued);
  ASSERT_TRUE(s.Submit(queued_job).ok());
  auto refused = std::make_shared<Probe>();
  Status full = s.Submit(LongJob("refused", 2, refused));
  EXPECT_EQ(full.code(), Status::Code::kResourceExhausted) << full.message();
  EXPECT_NE(full.message().find("max_queued_rows=4"), std::string::npos) << full.message();
  EXPECT_EQ(refused->DoneCalls(), 0);  // refused at Submit: the caller answers, not on_done

  // Cancel while queued.
  queued_job->cancelled.store(true);
  s.Wake();
  ASSERT_TRUE(queued->WaitDone());
  EXPECT_EQ(queued->outcome.status.code(), Status::Code::kCancelled);
  EXPECT_NE(queued->outcome.status.message().find("queued"), std::string::npos);

  // Deadline while queued: already passed when it arrives behind the full batch.
  auto late = std::make_shared<Probe>();
  auto late_job = LongJob("late", 1, late);
  late_job->deadline = SteadyClock::now() - 1ms;
  ASSERT_TRUE(s.Submit(late_job).ok());
  ASSERT_TRUE(late->WaitDone());
  EXPECT_EQ(late->outcome.status.code(), Status::Code::kDeadlineExceeded);
  EXPECT_NE(late->outcome.status.message().find("queued"), std::string::npos);

  // Cancel while running.
  running_job->cancelled.store(true);
  s.Wake();
  ASSERT_TRUE(running->WaitDone());
  EXPECT_EQ(running->outcome.status.code(), Status::Code::kCancelled);
  EXPECT_TRUE(running->outcome.images.empty());

  // Deadline while running: admitted into the free batch, it expires before its 20000 steps.
  auto expires = std::make_shared<Probe>();
  auto expires_job = LongJob("expires", 2, expires);
  expires_job->deadline = SteadyClock::now() + 500ms;
  ASSERT_TRUE(s.Submit(expires_job).ok());
  ASSERT_TRUE(expires->WaitDone());
  EXPECT_EQ(expires->outcome.status.code(), Status::Code::kDeadlineExceeded);
  EXPECT_NE(expires->outcome.status.message().find("of 20000 steps"), std::string::npos)
      << expires->outcome.status.message();
  EXPECT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 0 && st.queued_rows == 0; }));
  s.Stop();
  for (const auto& p : {running, queued, late, expires}) EXPECT_EQ(p->DoneCalls(), 1);
}

TEST(Scheduler, StopAnswersRunningAndQueuedRequestsWithItsReason) {
  const LoadedModel m = TinyModel(kLongT);
  BatchScheduler s("tiny", m, torch::kCPU, Limits(2, 16));
  auto a = std::make_shared<Probe>(), b = std::make_shared<Probe>(), c = std::make_shared<Probe>();
  ASSERT_TRUE(s.Submit(LongJob("a", 2, a)).ok());
  ASSERT_TRUE(WaitStats(s, [](const SchedulerStats& st) { return st.running_rows == 2; }));
  ASSERT_TRUE(s.Submit(LongJob("b", 2, b)).ok());
  ASSERT_TRUE(s.Submit(LongJob("c", 1, c)).ok());
  s.Stop(Status::Unavailable("model 'tiny' was replaced"));
  for (const auto& p : {a, b, c}) {
    ASSERT_EQ(p->DoneCalls(), 1);  // Stop returns after every answer was delivered
    EXPECT_EQ(p->outcome.status.code(), Status::Code::kUnavailable);
    EXPECT_EQ(p->outcome.status.message(), "model 'tiny' was replaced");
  }
  auto after = std::make_shared<Probe>();
  Status refused = s.Submit(LongJob("after", 1, after));
  EXPECT_EQ(refused.code(), Status::Code::kUnavailable);
  EXPECT_EQ(after->DoneCalls(), 0);
}

// A step faster than frame delivery (on a GPU, PNG encoding of many rows) must not queue a
// frame per step: past max_frames_in_delivery waiting, the request's further frames are skipped.
// Here on_frame blocks until the request has finished stepping, so every later frame would
// otherwise pile up in the delivery queue.
TEST(Scheduler, FramesASlowDeliveryCannotKeepUpWithAreSkippedNotQueued) {
  constexpr int kSteps = 60, kInDelivery = 2;
  const LoadedModel m = TinyModel(500);
  auto probe = std::make_shared<Probe>();
  bool released = false;  // declared before the scheduler: its delivery thread may wait on it
  std::vector<int> steps;
  auto release = [&] {
    {
      std::lock_guard<std::mutex> lock(probe->mu);
      released = true;
    }
    probe->cv.notify_all();
  };
  struct ReleaseOnExit {  // an ASSERT that returns early must not leave on_frame waiting
    std::function<void()> release;
    ~ReleaseOnExit() { release(); }
  } release_on_exit{release};
  SchedulerLimits limits = Limits(8, 16);
  limits.max_frames_in_delivery = kInDelivery;
  BatchScheduler s("tiny", m, torch::kCPU, limits);
  auto job = MakeJob("slow-reader", 1, kSteps, SamplerKind::kDdim, probe);
  job->frame_every = 1;
  job->on_frame = [probe, &released, &steps](FrameData&& f) {
    std::unique_lock<std::mutex> lock(probe->mu);
    probe->cv.wait(lock, [&] { return released; });
    ++probe->frames;
    steps.push_back(f.step);
  };
  ASSERT_TRUE(s.Submit(job).ok());
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (s.stats().steps < kSteps || s.stats().running_rows > 0) {  // stepped to the end, frames still held up
    ASSERT_LT(std::chrono::steady_clock::now(), give_up);
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(s.stats().frames_skipped, kSteps - 1 - kInDelivery);  // frames after steps 1..59; step 60 is the result
  release();
  ASSERT_TRUE(probe->WaitDone());
  s.Stop();
  EXPECT_TRUE(probe->outcome.status.ok()) << probe->outcome.status.message();
  EXPECT_EQ(probe->outcome.images.size(), 1u);
  EXPECT_EQ(probe->frames, kInDelivery);
  EXPECT_EQ(steps, (std::vector<int>{1, 2}));  // the first ones, in order, before the result
}

TEST(Scheduler, AThrowingFrameCallbackEndsItsRequestOnceAndOthersGoOn) {
  const LoadedModel m = TinyModel(kLongT);
  BatchScheduler s("tiny", m, torch::kCPU, Limits(8, 16));
  auto bad = std::make_shared<Probe>();
  auto bad_job = LongJob("bad", 1, bad);  // far too long to finish before its first frame is delivered
  bad_job->frame_every = 1;
  bad_job->on_frame = [](FrameData&&) { throw std::runtime_error("reader exploded"); };
  auto good = std::make_shared<Probe>();
  auto good_job = MakeJob("good", 2, 10, SamplerKind::kDdim, good);
  ASSERT_TRUE(s.Submit(bad_job).ok());
  ASSERT_TRUE(s.Submit(good_job).ok());
  ASSERT_TRUE(bad->WaitDone());
  ASSERT_TRUE(good->WaitDone());
  EXPECT_EQ(bad->outcome.status.code(), Status::Code::kInternal);
  EXPECT_NE(bad->outcome.status.message().find("frame"), std::string::npos) << bad->outcome.status.message();
  EXPECT_TRUE(good->outcome.status.ok()) << good->outcome.status.message();
  EXPECT_EQ(good->outcome.images.size(), 2u);
  s.Stop();
  EXPECT_EQ(bad->DoneCalls(), 1);
  EXPECT_EQ(good->DoneCalls(), 1);
}

TEST(Scheduler, AThrowingDoneCallbackDoesNotStopTheScheduler) {
  const LoadedModel m = TinyModel(50);
  BatchScheduler s("tiny", m, torch::kCPU, Limits(8, 16));
  auto thrower = std::make_shared<Probe>();
  auto job = MakeJob("throws", 1, 3, SamplerKind::kDdim, thrower);
  auto record = job->on_done;
  job->on_done = [record](JobOutcome&& o) {
    record(std::move(o));
    throw std::runtime_error("on_done exploded");
  };
  ASSERT_TRUE(s.Submit(job).ok());
  ASSERT_TRUE(thrower->WaitDone());
  auto next = std::make_shared<Probe>();
  ASSERT_TRUE(s.Submit(MakeJob("next", 1, 3, SamplerKind::kDdim, next)).ok());
  ASSERT_TRUE(next->WaitDone());
  EXPECT_TRUE(next->outcome.status.ok()) << next->outcome.status.message();
  s.Stop();
  EXPECT_EQ(thrower->DoneCalls(), 1);
}

// A model replaced (a job published a new version, or the models-dir watcher saw one) or
// removed while its requests run: new requests find the new version (or none), the old one
// finishes what it has, and is stopped once idle (ReapRetired), so a swap fails no request.
TEST(Scheduler, AModelReplacedOrRemovedWhileItsRequestsRunFinishesThemThenStops) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("spritediff-replace-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  LoadedModel m = TinyModel(kLongT);
  ASSERT_TRUE(SaveModel((dir / "tiny").string(), m.info, m.net).ok());
  ModelRegistry registry(dir.string(), "tiny", torch::kCPU, Limits(8, 16));
  ASSERT_TRUE(registry.Add("tiny", (dir / "tiny").string()).ok());
  EXPECT_NE(registry.Fingerprints().at("tiny"), "");
  std::shared_ptr<ServedModel> old = registry.Find("tiny");
  auto probe = std::make_shared<Probe>();
  ASSERT_TRUE(old->scheduler->Submit(MakeJob("on-old", 1, 3000, SamplerKind::kDdim, probe)).ok());
  ASSERT_TRUE(WaitStats(*old->scheduler, [](const SchedulerStats& st) { return st.running_rows == 1; }));
  ASSERT_TRUE(registry.Add("tiny", (dir / "tiny").string()).ok());
  std::shared_ptr<ServedModel> replacement = registry.Find("tiny");
  EXPECT_NE(replacement, old);
  registry.ReapRetired();  // busy: kept running
  EXPECT_EQ(probe->DoneCalls(), 0) << "the request on the replaced version was ended, not drained";
  ASSERT_TRUE(probe->WaitDone());
  EXPECT_TRUE(probe->outcome.status.ok()) << probe->outcome.status.message();
  // Idle and past the grace second: stopped; nothing reaches it any more.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  registry.ReapRetired();
  EXPECT_EQ(old->scheduler->Submit(MakeJob("late", 1, 2, SamplerKind::kDdim, std::make_shared<Probe>())).code(),
            Status::Code::kUnavailable);
  // Removed the same way: gone from Find at once, its running request finishes.
  auto on_removed = std::make_shared<Probe>();
  ASSERT_TRUE(replacement->scheduler->Submit(MakeJob("on-removed", 1, 3000, SamplerKind::kDdim, on_removed)).ok());
  ASSERT_TRUE(WaitStats(*replacement->scheduler, [](const SchedulerStats& st) { return st.running_rows == 1; }));
  ASSERT_TRUE(registry.Remove("tiny").ok());
  EXPECT_EQ(registry.Find("tiny"), nullptr);
  EXPECT_EQ(registry.Remove("tiny").code(), Status::Code::kNotFound);
  ASSERT_TRUE(on_removed->WaitDone());
  EXPECT_TRUE(on_removed->outcome.status.ok()) << on_removed->outcome.status.message();
  registry.StopAll();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace spritediff
