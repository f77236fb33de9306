// Prometheus metrics over HTTP (cpp-httplib) at http://<bind>:<metrics_port>/metrics: sample
// requests by model and status with latency histograms, each model's scheduler counters and
// queue depth, and training jobs by state. Rendering pulls from the registry and the job
// runner at scrape time; only the per-request counters are kept here.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/status.h"

namespace httplib {
class Server;
}

namespace spritediff {

class ModelRegistry;
class JobRunner;

// The model label of Sample calls that named no served model: client-invented names must not
// each become a series (4,000 such names once made /metrics 200 MB).
inline constexpr char kUnknownModelLabel[] = "(unknown)";

class RequestMetrics {
 public:
  // One finished Sample call: a served model's name (kUnknownModelLabel otherwise), gRPC
  // status name, and timings.
  void Record(const std::string& model, const std::string& code, double queued_ms, double run_ms);
  void Render(std::string* out) const;

 private:
  struct Histogram {
    std::vector<int64_t> buckets;  // cumulative counts per upper bound
    int64_t count = 0;
    double sum = 0;
  };
  static void Observe(Histogram& h, double seconds);
  static void RenderHistogram(const std::string& name, const std::map<std::string, Histogram>& by_model,
                              std::string* out);

  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, int64_t> requests_;  // GUARDED_BY(mu_) (model, code)
  std::map<std::string, Histogram> queued_;                          // GUARDED_BY(mu_) by model
  std::map<std::string, Histogram> run_;                             // GUARDED_BY(mu_) by model
};

class MetricsServer {
 public:
  MetricsServer(const ModelRegistry& registry, const JobRunner& jobs, const RequestMetrics& requests);
  ~MetricsServer();
  // Binds and serves on a thread of its own; an address in use is an error.
  Status Start(const std::string& bind, int port);
  void Stop();
  std::string Render() const;
  // Dirs whose size /metrics reports (spritediff_disk_bytes{dir="models"|"state"}).
  void SetDiskPaths(std::string models_dir, std::string state_dir);

 private:
  std::string models_dir_;
  std::string state_dir_;
  const ModelRegistry& registry_;
  const JobRunner& jobs_;
  const RequestMetrics& requests_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::atomic<bool> listening_done_{true};
};

}  // namespace spritediff
