#include "core/distributed.h"

#ifndef SPRITEDIFF_NO_DISTRIBUTED
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

namespace spritediff {

namespace {

using Clock = std::chrono::steady_clock;
const char kKeyPrefix[] = "spritediff/";

std::string ArrivedKey(int rank) { return std::string(kKeyPrefix) + "arrived/" + std::to_string(rank); }
std::string StepKey(int rank) { return std::string(kKeyPrefix) + "step/" + std::to_string(rank); }
std::string BeatKey(int rank) { return std::string(kKeyPrefix) + "beat/" + std::to_string(rank); }
std::string ErrorKey(int rank) { return std::string(kKeyPrefix) + "error/" + std::to_string(rank); }

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string FromBytes(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

// An integer environment variable in [lo, hi]; `fallback` when unset.
Result<int64_t> EnvInt(const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi) {
    return Status::InvalidArgument(std::string(name) + "=" + std::string(v).substr(0, 32) + ": must be an integer in [" +
                                   std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return static_cast<int64_t>(x);
}

std::string Seconds(double s) {
  std::ostringstream o;
  o << s << " s";
  return o.str();
}

std::string ShortError(const std::exception& e) {
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

bool IsLoopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

}  // namespace

Result<DistributedConfig> DistributedFromEnv(double timeout_s) {
  DistributedConfig c;
  Result<int64_t> world = EnvInt("WORLD_SIZE", 1, 65536, 1);
  if (!world.ok()) return world.status();
  c.world_size = static_cast<int>(*world);
  Result<int64_t> rank = EnvInt("RANK", 0, c.world_size - 1, 0);
  if (!rank.ok()) return rank.status();
  c.rank = static_cast<int>(*rank);
  Result<int64_t> local = EnvInt("LOCAL_RANK", 0, 65535, 0);
  if (!local.ok()) return local.status();
  c.local_rank = static_cast<int>(*local);
  if (timeout_s > 0) {
    c.timeout_s = timeout_s;
  } else {
    Result<int64_t> t = EnvInt("SPRITEDIFF_DIST_TIMEOUT_S", 1, 86400, static_cast<int64_t>(kDefaultDistTimeoutS));
    if (!t.ok()) return t.status();
    c.timeout_s = static_cast<double>(*t);
  }
  if (!c.enabled()) return c;
  if (std::getenv("RANK") == nullptr) return Status::InvalidArgument("RANK must be set when WORLD_SIZE > 1");
  const char* addr = std::getenv("MASTER_ADDR");
  if (addr == nullptr || *addr == '\0') return Status::InvalidArgument("MASTER_ADDR must be set when WORLD_SIZE > 1");
  c.master_addr = addr;
  if (std::getenv("MASTER_PORT") == nullptr) return Status::InvalidArgument("MASTER_PORT must be set when WORLD_SIZE > 1");
  Result<int64_t> port = EnvInt("MASTER_PORT", 1, 65535, 0);
  if (!port.ok()) return port.status();
  c.master_port = static_cast<int>(*port);
  return c;
}

int64_t TensorChecksum(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a over the raw bytes
  for (const torch::Tensor& t : tensors) {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const auto* p = static_cast<const unsigned char*>(c.data_ptr());
    const size_t n = c.numel() * c.element_size();
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  }
  return static_cast<int64_t>(h >> 2);  // 62 bits: negating it cannot overflow
}

DataParallel::DataParallel(DistributedConfig config, c10::intrusive_ptr<c10d::Store> store, torch::Device device)
    : config_(std::move(config)), store_(std::move(store)), device_(device) {}

DataParallel::~DataParallel() {
  {
    std::lock_guard<std::mutex> lock(beat_mu_);
    beat_stop_ = true;
  }
  beat_cv_.notify_all();
  if (beat_thread_.joinable()) beat_thread_.join();
}

void DataParallel::Heartbeat(c10::intrusive_ptr<c10d::Store> store) {
  std::unique_lock<std::mutex> lock(beat_mu_);
  while (!beat_stop_) {
    try {
      store->add(BeatKey(config_.rank), 1);
    } catch (const std::exception&) {
      return;  // the store (rank 0) is gone; collectives will say so
    }
    beat_cv_.wait_for(lock, std::chrono::milliseconds(500));
  }
}

std::vector<int64_t> DataParallel::ReadBeats() {
  std::vector<int64_t> beats(config_.world_size, -1);
  for (int r = 0; r < config_.world_size; ++r) beats[r] = store_->add(BeatKey(r), 0);
  return beats;
}

std::chrono::milliseconds DataParallel::timeout() const {
  return std::chrono::milliseconds(static_cast<int64_t>(config_.timeout_s * 1000));
}

Result<std::unique_ptr<DataParallel>> DataParallel::Connect(const DistributedConfig& config,
                                                            const torch::Device& device) {
#ifdef SPRITEDIFF_NO_DISTRIBUTED
  (void)device;
  return Status::FailedPrecondition("this spritediffd was built with SPRITEDIFF_DISTRIBUTED=OFF: data-parallel "
                                    "training (WORLD_SIZE " + std::to_string(config.world_size) + ") is not available");
#else
  // A write to the socket of a peer that died must fail with EPIPE, which Gloo and the store turn
  // into an error we can explain, instead of killing this rank with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  const std::string where = config.master_addr + ":" + std::to_string(config.master_port);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  c10::intrusive_ptr<c10d::Store> tcp;
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(config.master_port);
    opts.isServer = config.rank == 0;
    opts.waitWorkers = false;  // arrivals are checked below, so that a missing rank can be named
    opts.timeout = timeout;
    tcp = c10::make_intrusive<c10d::TCPStore>(config.master_addr, opts);
  } catch (const std::exception& e) {
    if (config.rank == 0) {
      return Status::Unavailable("rank 0 could not host the rendezvous store on " + where + ": " + ShortError(e));
    }
    return Status::DeadlineExceeded("rank " + std::to_string(config.rank) + " could not reach rank 0's store at " +
                                    where + " within " + Seconds(config.timeout_s) +
                                    ": rank 0 never arrived or is unreachable (" + ShortError(e) + ")");
  }
  std::unique_ptr<DataParallel> dp(new DataParallel(config, tcp, device));
  try {
    tcp->set(ArrivedKey(config.rank), Bytes("1"));
    tcp->set(StepKey(config.rank), Bytes("0"));
    const auto deadline = Clock::now() + timeout;
    std::vector<int> missing;
    for (;;) {
      missing.clear();
      for (int r = 0; r < config.world_size; ++r) {
        if (!tcp->check({ArrivedKey(r)})) missing.push_back(r);
      }
      if (missing.empty() || Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!missing.empty()) {
      std::string names;
      for (int r : missing) names += (names.empty() ? "" : ", ") + std::to_string(r);
      return Status::DeadlineExceeded(std::string(missing.size() == 1 ? "rank " : "ranks ") + names + " of " +
                                      std::to_string(config.world_size) + " did not arrive at " + where +
                                      " within " + Seconds(config.timeout_s) + " (this is rank " +
                                      std::to_string(config.rank) + "; see --dist-timeout)");
    }
    c10d::TCPStoreOptions beat_opts;
    beat_opts.port = static_cast<uint16_t>(config.master_port);
    beat_opts.waitWorkers = false;
    beat_opts.timeout = std::chrono::milliseconds(5000);
    auto beat_store = c10::make_intrusive<c10d::TCPStore>(config.master_addr, beat_opts);
    DataParallel* self = dp.get();
    dp->beat_thread_ = std::thread([self, beat_store] { self->Heartbeat(beat_store); });
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("spritediff/pg", tcp);
    if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      dp->group_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, config.rank, config.world_size, opts);
#else
      return Status::FailedPrecondition("this libtorch was built without NCCL: data-parallel training on " +
                                        device.str() + " is not available; use --device cpu");
#endif
    } else {
#ifdef USE_C10D_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && *ifname != '\0') {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (IsLoopback(config.master_addr)) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      opts->threads = 2;
      dp->group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, config.rank, config.world_size, opts);
#else
      return Status::FailedPrecondition("this build has no Gloo backend (USE_C10D_GLOO): data-parallel training on "
                                        "CPU is not available");
#endif
    }
  } catch (const std::exception& e) {
    return dp->Explain("joining the process group", ShortError(e));
  }
  return std::move(dp);
#endif
}

void DataParallel::MarkStep(int64_t step) {
  step_ = step;
  try {
    store_->set(StepKey(config_.rank), Bytes(std::to_string(step)));
  } catch (const std::exception&) {
    // The next collective reports the lost peer with a better message.
  }
}

void DataParallel::ReportFailure(const std::string& message) {
  try {
    store_->set(ErrorKey(config_.rank), Bytes(message.substr(0, 500)));
  } catch (const std::exception&) {
  }
}

Status DataParallel::Explain(const std::string& what, const std::string& error) {
  std::ostringstream msg;
  msg << "rank " << config_.rank << " of " << config_.world_size << ": " << what << " failed after step " << step_
      << " (" << error.substr(0, 300) << ")";
  std::vector<std::string> blame;
  try {
    store_->setTimeout(std::chrono::milliseconds(5000));
    // A rank whose heartbeat does not move over 2 s is gone.
    const std::vector<int64_t> before = ReadBeats();
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    const std::vector<int64_t> after = ReadBeats();
    // Per rank: its own error report if it left one, else no heartbeat (gone), else behind us.
    for (int r = 0; r < config_.world_size; ++r) {
      if (r == config_.rank) continue;
      const int64_t step = store_->check({StepKey(r)}) ? std::stoll(FromBytes(store_->get(StepKey(r)))) : -1;
      if (store_->check({ErrorKey(r)})) {
        blame.push_back("rank " + std::to_string(r) + " failed: " + FromBytes(store_->get(ErrorKey(r))));
      } else if (after[r] == before[r]) {
        blame.push_back("rank " + std::to_string(r) + " is gone (no heartbeat: it died, was killed or is frozen; " +
                        "last completed step " + std::to_string(step) + ")");
      } else if (step < step_) {
        blame.push_back("rank " + std::to_string(r) + " is alive but stuck after step " + std::to_string(step));
      }
    }
  } catch (const std::exception&) {
    blame.push_back(config_.rank == 0 ? "the store is unusable"
                                      : "rank 0 (which hosts the store at " + config_.master_addr + ":" +
                                            std::to_string(config_.master_port) + ") is gone");
  }
  if (blame.empty()) blame.push_back("no other rank reported a failure; timeout " + Seconds(config_.timeout_s));
  for (const std::string& b : blame) msg << "; " << b;
  return Status::Unavailable(msg.str());
}

Result<c10::intrusive_ptr<c10d::Work>> DataParallel::StartAllReduceSum(torch::Tensor& tensor, const std::string& what) {
  try {
    std::vector<torch::Tensor> v{tensor};
    return group_->allreduce(v);
  } catch (const std::exception& e) {
    return Explain(what, ShortError(e));
  }
}

Status DataParallel::Wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& what) {
  try {
    work->wait(timeout());
    return Status::Ok();
  } catch (const std::exception& e) {
    return Explain(what, ShortError(e));
  }
}

Status DataParallel::AllReduceSum(torch::Tensor& tensor, const std::string& what) {
  Result<c10::intrusive_ptr<c10d::Work>> work = StartAllReduceSum(tensor, what);
  if (!work.ok()) return work.status();
  return Wait(*work, what);
}

Status DataParallel::Broadcast(std::vector<torch::Tensor> tensors, const std::string& what) {
  for (torch::Tensor& t : tensors) {
    try {
      std::vector<torch::Tensor> v{t};
      Status s = Wait(group_->broadcast(v), what);
      if (!s.ok()) return s;
    } catch (const std::exception& e) {
      return Explain(what, ShortError(e));
    }
  }
  return Status::Ok();
}

Status DataParallel::Agree(const std::vector<std::pair<std::string, int64_t>>& fields) {
  const int64_t n = static_cast<int64_t>(fields.size());
  torch::Tensor all = torch::zeros({config_.world_size, n}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i) all[config_.rank][i].fill_(fields[i].second);
  all = all.to(device_);
  Status s = AllReduceSum(all, "agreeing on the run's settings");
  if (!s.ok()) return s;
  all = all.to(torch::kCPU);
  for (int64_t i = 0; i < n; ++i) {
    bool same = true;
    for (int r = 1; r < config_.world_size; ++r) same = same && all[r][i].item<int64_t>() == all[0][i].item<int64_t>();
    if (same) continue;
    std::ostringstream msg;
    msg << "ranks disagree on " << fields[i].first << ":";
    for (int r = 0; r < config_.world_size; ++r) msg << " rank " << r << " has " << all[r][i].item<int64_t>() << ";";
    msg << " every rank must run with the same flags and data";
    return Status::FailedPrecondition(msg.str());
  }
  return Status::Ok();
}

Status DataParallel::Barrier(const std::string& what) {
  torch::Tensor one = torch::ones({1}, torch::TensorOptions().dtype(torch::kInt64).device(device_));
  return AllReduceSum(one, what);
}

GradientBuckets::GradientBuckets(DataParallel& group, std::vector<torch::Tensor> params, double bucket_mb)
    : group_(group), params_(std::move(params)) {
  const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024));
  bucket_of_.resize(params_.size());
  offset_of_.resize(params_.size());
  arrived_.assign(params_.size(), false);
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k];
    const int64_t size = p.numel() * p.element_size();
    if (buckets_.empty() || (bytes > 0 && bytes + size > cap)) {
      buckets_.emplace_back();
      bytes = 0;
    }
    Bucket& b = buckets_.back();
    bucket_of_[k] = buckets_.size() - 1;
    offset_of_[k] = bytes / p.element_size();
    b.params.push_back(k);
    b.offsets.push_back(offset_of_[k]);
    bytes += size;
  }
  for (Bucket& b : buckets_) {
    int64_t numel = 0;
    for (size_t k : b.params) numel += params_[k].numel();
    b.flat = torch::zeros({numel}, params_[b.params.front()].options().requires_grad(false));
  }
  for (size_t k = 0; k < params_.size(); ++k) {
    hook_ids_.push_back(params_[k].register_hook([this, k](torch::Tensor grad) { OnGradient(k, grad); }));
  }
}

GradientBuckets::~GradientBuckets() {
  for (size_t k = 0; k < hook_ids_.size(); ++k) params_[k].remove_hook(hook_ids_[k]);
}

void GradientBuckets::Begin() {
  std::lock_guard<std::mutex> lock(mu_);
  for (Bucket& b : buckets_) {
    b.pending = b.params.size();
    b.launched = false;
    b.work.reset();
  }
  arrived_.assign(params_.size(), false);
  next_launch_ = 0;
  error_ = Status::Ok();
}

void GradientBuckets::OnGradient(size_t param, const torch::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mu_);
  Bucket& b = buckets_[bucket_of_[param]];
  if (arrived_[param] || b.launched) return;  // a second call would be a bug in autograd's contract; ignore it
  arrived_[param] = true;
  b.flat.narrow(0, offset_of_[param], grad.numel()).copy_(grad.detach().reshape({-1}));
  --b.pending;
  LaunchReady();
}

void GradientBuckets::LaunchReady() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) Launch(buckets_[next_launch_++]);
}

void GradientBuckets::Launch(Bucket& bucket) {
  bucket.launched = true;
  if (!error_.ok()) return;
  Result<c10::intrusive_ptr<c10d::Work>> work = group_.StartAllReduceSum(bucket.flat, "all-reduce of gradients");
  if (!work.ok()) {
    error_ = work.status();
    return;
  }
  bucket.work = *work;
}

Status GradientBuckets::Finish() {
  const auto start = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  // Parameters that took no part in this backward contribute zeros, so that every rank still
  // issues every bucket in the same order.
  for (size_t k = 0; k < params_.size(); ++k) {
    if (arrived_[k]) continue;
    Bucket& b = buckets_[bucket_of_[k]];
    b.flat.narrow(0, offset_of_[k], params_[k].numel()).zero_();
    arrived_[k] = true;
    --b.pending;
  }
  LaunchReady();
  const double inv = 1.0 / group_.world_size();
  for (Bucket& b : buckets_) {
    if (!error_.ok()) break;
    if (b.work) {
      Status s = group_.Wait(b.work, "all-reduce of gradients");
      if (!s.ok()) error_ = s;
    }
  }
  if (!error_.ok()) return error_;
  torch::NoGradGuard no_grad;
  for (Bucket& b : buckets_) {
    b.flat.mul_(inv);
    for (size_t i = 0; i < b.params.size(); ++i) {
      torch::Tensor& p = params_[b.params[i]];
      torch::Tensor avg = b.flat.narrow(0, b.offsets[i], p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(avg);
      else p.mutable_grad() = avg.clone();
    }
  }
  last_wait_s_ = std::chrono::duration<double>(Clock::now() - start).count();
  return Status::Ok();
}

}  // namespace spritediff
