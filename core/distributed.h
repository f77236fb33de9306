// Data-parallel training on torch.distributed's c10d: rendezvous through a TCPStore, Gloo on
// CPU (NCCL on CUDA when libtorch was built with it), gradients averaged in buckets that are
// all-reduced while the backward pass is still running.
//
// Launch contract (the one torchrun uses): MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and
// LOCAL_RANK in the environment; rank 0 hosts the store. Every rank holds a full replica;
// after each step every replica is the same, bit for bit (all ranks add the same all-reduced
// gradient to the same weights). A rank that never arrives or dies makes the others fail
// within the timeout with a message that names it.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <utility>
#include <vector>

#include <torch/version.h>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "common/status.h"

namespace spritediff {

// Where this process sits in a data-parallel run; world_size 1 means "not distributed".
struct DistributedConfig {
  int world_size = 1;
  int rank = 0;
  int local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  double timeout_s = 300;  // rendezvous and every collective; c10d's own default is 30 minutes
  double bucket_mb = 4;    // gradient bytes per all-reduce

  bool enabled() const { return world_size > 1; }
};

// Default collective timeout when neither the flag nor SPRITEDIFF_DIST_TIMEOUT_S sets one.
constexpr double kDefaultDistTimeoutS = 300;

// Reads the torchrun environment. No WORLD_SIZE (or WORLD_SIZE=1) gives a single-process
// config. `timeout_s` > 0 (a command-line flag) wins over SPRITEDIFF_DIST_TIMEOUT_S, which wins
// over kDefaultDistTimeoutS. Errors name the variable and its allowed range.
Result<DistributedConfig> DistributedFromEnv(double timeout_s = 0);

// A 62-bit hash of the bytes of `tensors` (CPU copies); equal replicas give equal checksums.
int64_t TensorChecksum(const std::vector<torch::Tensor>& tensors);

// One rank's membership of the process group: the store, the group, and the bookkeeping that
// lets a failure name the rank responsible. Collectives must be issued in the same order on
// every rank.
class DataParallel {
 public:
  // Joins the group: connects to (rank 0: hosts) the store, waits for every rank to arrive,
  // then builds the process group for `device` (Gloo on CPU, NCCL on CUDA).
  static Result<std::unique_ptr<DataParallel>> Connect(const DistributedConfig& config, const torch::Device& device);
  ~DataParallel();

  int rank() const { return config_.rank; }
  int world_size() const { return config_.world_size; }
  const DistributedConfig& config() const { return config_; }
  std::chrono::milliseconds timeout() const;

  // Launches a sum all-reduce of one tensor in place; the caller waits with Wait.
  Result<c10::intrusive_ptr<c10d::Work>> StartAllReduceSum(torch::Tensor& tensor, const std::string& what);
  Status Wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what);
  // Blocking sum all-reduce in place.
  Status AllReduceSum(torch::Tensor& tensor, const std::string& what);
  // Copies rank 0's tensors into every rank's.
  Status Broadcast(std::vector<torch::Tensor> tensors, const std::string& what);
  // Checks that every rank holds the same value for each named field; the error names the
  // field and every rank's value.
  Status Agree(const std::vector<std::pair<std::string, int64_t>>& fields);
  // Waits until every rank got here.
  Status Barrier(const std::string& what);

  // Heartbeat: the number of steps this rank completed, kept in the store so that a failure
  // can say who fell behind.
  void MarkStep(int64_t step);
  // Leaves this rank's error in the store for the others' messages; best effort.
  void ReportFailure(const std::string& message);

 private:
  DataParallel(DistributedConfig config, c10::intrusive_ptr<c10d::Store> store, torch::Device device);
  // Turns a failed collective into a message naming the ranks that failed or fell behind.
  Status Explain(const std::string& what, const std::string& error);

  // Bumps this rank's heartbeat counter in the store twice a second over its own connection, so
  // that a failure can tell a dead rank (no beats) from one that merely failed too.
  void Heartbeat(c10::intrusive_ptr<c10d::Store> store);
  std::vector<int64_t> ReadBeats();

  DistributedConfig config_;
  c10::intrusive_ptr<c10d::Store> store_;
  torch::Device device_;  // where collective buffers live (NCCL needs them on the GPU)
  // The collective backend (Gloo or NCCL). libtorch 1.x's ProcessGroupGloo/NCCL are ProcessGroups;
  // from 2.0 they are c10d::Backends behind a dispatching ProcessGroup, and we hold the backend.
#if TORCH_VERSION_MAJOR >= 2
  c10::intrusive_ptr<c10d::Backend> group_;
#else
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
#endif
  int64_t step_ = 0;
  std::mutex beat_mu_;
  std::condition_variable beat_cv_;
  bool beat_stop_ = false;
  std::thread beat_thread_;
};

// Averages gradients over the ranks, one flat bucket of about `bucket_mb` at a time. A hook on
// each parameter copies its gradient into its bucket as backward produces it; a bucket whose
// gradients are all in is all-reduced at once (in bucket order on every rank, as c10d requires)
// while backward goes on. Buckets hold parameters in reverse order, the order backward reaches
// them. Finish waits for every bucket and writes the averages into the parameters' .grad.
class GradientBuckets {
 public:
  GradientBuckets(DataParallel& group, std::vector<torch::Tensor> params, double bucket_mb);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // Call before backward.
  void Begin();
  // Call after backward, before the optimizer step.
  Status Finish();

  size_t bucket_count() const { return buckets_.size(); }
  // Seconds the last Finish spent waiting for communication backward did not hide.
  double last_wait_s() const { return last_wait_s_; }

 private:
  struct Bucket {
    torch::Tensor flat;
    std::vector<size_t> params;
    std::vector<int64_t> offsets;
    size_t pending = 0;
    bool launched = false;
    c10::intrusive_ptr<c10d::Work> work;
  };
  void OnGradient(size_t param, const torch::Tensor& grad);
  void LaunchReady();
  void Launch(Bucket& bucket);

  DataParallel& group_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<int64_t> offset_of_;
  std::vector<bool> arrived_;
  std::vector<Bucket> buckets_;
  std::vector<unsigned> hook_ids_;
  size_t next_launch_ = 0;
  Status error_;
  std::mutex mu_;  // autograd may call hooks from its device threads
  double last_wait_s_ = 0;
};

}  // namespace spritediff
