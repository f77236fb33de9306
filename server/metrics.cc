#include "server/metrics.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <sstream>

#include "server/job_runner.h"
#include "server/model_registry.h"

namespace spritediff {

namespace {

constexpr size_t kMetricsThreads = 4;
constexpr time_t kMetricsIoTimeoutS = 2;

constexpr std::array<double, 11> kBounds = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

// Label values are model names and status names: escape what the exposition format requires.
std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void Line(std::string* out, const std::string& name, const std::string& labels, double value) {
  std::ostringstream s;
  s << name;
  if (!labels.empty()) s << '{' << labels << '}';
  s << ' ' << value << '\n';
  *out += s.str();
}

// Sum of regular file sizes under dir (symlinks not followed); 0 when it does not exist.
uint64_t DiskBytes(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  uint64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) {
      const uintmax_t size = it->file_size(size_ec);
      if (!size_ec) total += size;
    }
  }
  return total;
}

}  // namespace

void RequestMetrics::Observe(Histogram& h, double seconds) {
  if (h.buckets.empty()) h.buckets.assign(kBounds.size(), 0);
  for (size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) h.buckets[i]++;
  }
  h.count++;
  h.sum += seconds;
}

void RequestMetrics::Record(const std::string& model, const std::string& code, double queued_ms, double run_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_[{model, code}]++;
  if (code == "OK") {
    Observe(queued_[model], queued_ms / 1000.0);
    Observe(run_[model], run_ms / 1000.0);
  }
}

void RequestMetrics::RenderHistogram(const std::string& name, const std::map<std::string, Histogram>& by_model,
                                     std::string* out) {
  for (const auto& [model, h] : by_model) {
    const std::string m = "model=\"" + Escape(model) + "\"";
    for (size_t i = 0; i < kBounds.size(); ++i) {
      std::ostringstream le;
      le << kBounds[i];
      Line(out, name + "_bucket", m + ",le=\"" + le.str() + "\"", static_cast<double>(h.buckets[i]));
    }
    Line(out, name + "_bucket", m + ",le=\"+Inf\"", static_cast<double>(h.count));
    Line(out, name + "_sum", m, h.sum);
    Line(out, name + "_count", m, static_cast<double>(h.count));
  }
}

void RequestMetrics::Render(std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out += "# HELP spritediff_sample_requests_total Sample calls finished, by model and gRPC status.\n"
          "# TYPE spritediff_sample_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    Line(out, "spritediff_sample_requests_total",
         "model=\"" + Escape(key.first) + "\",code=\"" + Escape(key.second) + "\"", static_cast<double>(n));
  }
  *out += "# HELP spritediff_sample_queue_seconds Time successful requests waited for admission.\n"
          "# TYPE spritediff_sample_queue_seconds histogram\n";
  RenderHistogram("spritediff_sample_queue_seconds", queued_, out);
  *out += "# HELP spritediff_sample_run_seconds Time successful requests spent denoising.\n"
          "# TYPE spritediff_sample_run_seconds histogram\n";
  RenderHistogram("spritediff_sample_run_seconds", run_, out);
}

MetricsServer::MetricsServer(const ModelRegistry& registry, const JobRunner& jobs, const RequestMetrics& requests)
    : registry_(registry), jobs_(jobs), requests_(requests) {}

MetricsServer::~MetricsServer() { Stop(); }

std::string MetricsServer::Render() const {
  std::string out;
  requests_.Render(&out);
  const auto models = registry_.List();
  out += "# HELP spritediff_scheduler_steps_total Batched denoising forwards run.\n"
         "# TYPE spritediff_scheduler_steps_total counter\n";
  for (const auto& m : models) {
    Line(&out, "spritediff_scheduler_steps_total", "model=\"" + Escape(m->name) + "\"",
         static_cast<double>(m->scheduler->stats().steps));
  }
  out += "# HELP spritediff_scheduler_rows_stepped_total Rows advanced, summed over steps (divide by steps for the mean batch).\n"
         "# TYPE spritediff_scheduler_rows_stepped_total counter\n";
  for (const auto& m : models) {
    Line(&out, "spritediff_scheduler_rows_stepped_total", "model=\"" + Escape(m->name) + "\"",
         static_cast<double>(m->scheduler->stats().rows_stepped));
  }
  out += "# HELP spritediff_scheduler_frames_skipped_total Progress frames not made because their request already had max_pending_frames waiting to be encoded.\n"
         "# TYPE spritediff_scheduler_frames_skipped_total counter\n";
  for (const auto& m : models) {
    Line(&out, "spritediff_scheduler_frames_skipped_total", "model=\"" + Escape(m->name) + "\"",
         static_cast<double>(m->scheduler->stats().frames_skipped));
  }
  out += "# HELP spritediff_queued_rows Rows waiting for admission.\n# TYPE spritediff_queued_rows gauge\n";
  for (const auto& m : models) {
    Line(&out, "spritediff_queued_rows", "model=\"" + Escape(m->name) + "\"",
         static_cast<double>(m->scheduler->stats().queued_rows));
  }
  out += "# HELP spritediff_running_rows Rows in the running batch.\n# TYPE spritediff_running_rows gauge\n";
  for (const auto& m : models) {
    Line(&out, "spritediff_running_rows", "model=\"" + Escape(m->name) + "\"",
         static_cast<double>(m->scheduler->stats().running_rows));
  }
  out += "# HELP spritediff_scheduler_overloaded 1 within 5 s of a request refused with RESOURCE_EXHAUSTED (the CPU batch then fills to cpu_overload_batch_rows), else 0.\n"
         "# TYPE spritediff_scheduler_overloaded gauge\n";
  for (const auto& m : models) {
    Line(&out, "spritediff_scheduler_overloaded", "model=\"" + Escape(m->name) + "\"",
         m->scheduler->stats().overloaded ? 1 : 0);
  }
  out += "# HELP spritediff_scheduler_step_seconds A denoising step's time, smoothed over steps (max_queue_wait_s's estimate uses it).\n"
         "# TYPE spritediff_scheduler_step_seconds gauge\n";
  for (const auto& m : models) {
    Line(&out, "spritediff_scheduler_step_seconds", "model=\"" + Escape(m->name) + "\"",
         m->scheduler->stats().step_seconds);
  }
  std::map<std::string, int> by_state;
  for (const auto& state : {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED"}) by_state[state] = 0;
  for (const v1::Job& job : jobs_.List()) {
    std::string name = v1::JobState_Name(job.state());
    by_state[name.substr(name.rfind('_') + 1)]++;
  }
  out += "# HELP spritediff_training_jobs Training jobs on record, by state.\n# TYPE spritediff_training_jobs gauge\n";
  for (const auto& [state, n] : by_state) Line(&out, "spritediff_training_jobs", "state=\"" + state + "\"", n);
  out += "# HELP spritediff_disk_bytes Bytes in regular files under the models dir and the job state dir.\n"
         "# TYPE spritediff_disk_bytes gauge\n";
  const std::vector<std::pair<std::string, std::string>> disk_dirs = {{"models", models_dir_}, {"state", state_dir_}};
  for (const auto& [label, dir] : disk_dirs) {
    if (!dir.empty()) Line(&out, "spritediff_disk_bytes", "dir=\"" + label + "\"", static_cast<double>(DiskBytes(dir)));
  }
  return out;
}

void MetricsServer::SetDiskPaths(std::string models_dir, std::string state_dir) {
  models_dir_ = std::move(models_dir);
  state_dir_ = std::move(state_dir);
}

Status MetricsServer::Start(const std::string& bind, int port) {
  http_ = std::make_unique<httplib::Server>();
  // httplib's default also sets SO_REUSEPORT, which would let a second daemon share the port
  // silently; address reuse alone is what a restart needs.
  http_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
  });
  // Slow or idle clients cannot hold the listener: short read/write timeouts, a small pool of
  // its own, one request per connection, and no request bodies.
  http_->new_task_queue = [] { return new httplib::ThreadPool(kMetricsThreads); };
  http_->set_read_timeout(kMetricsIoTimeoutS, 0);
  http_->set_write_timeout(kMetricsIoTimeoutS, 0);
  http_->set_keep_alive_max_count(1);
  http_->set_keep_alive_timeout(1);
  http_->set_payload_max_length(4096);
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Render(), "text/plain; version=0.0.4");
  });
  if (!http_->bind_to_port(bind.c_str(), port)) {
    return Status::FailedPrecondition("metrics: cannot listen on " + bind + ":" + std::to_string(port) +
                                      " (address in use or not permitted?)");
  }
  listening_done_.store(false);
  thread_ = std::thread([this] {
    http_->listen_after_bind();
    listening_done_.store(true);
  });
  return Status::Ok();
}

void MetricsServer::Stop() {
  if (!thread_.joinable()) return;
  // stop() is a no-op until the listen loop has started, so repeat it until the loop is gone.
  while (!listening_done_.load()) {
    http_->stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  thread_.join();
}

}  // namespace spritediff
