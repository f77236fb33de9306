#include "common/config.h"

#include "common/file_util.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

namespace spritediff {

using nlohmann::json;

Status AppConfig::Validate() const {
  auto range = [](const char* name, int v, int lo, int hi) -> Status {
    if (v < lo || v > hi) {
      return Status::InvalidArgument(std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "], got " + std::to_string(v));
    }
    return Status::Ok();
  };
  for (const Status& s : {range("port", port, 0, 65535), range("metrics_port", metrics_port, 0, 65535), range("threads", threads, 0, 1024),
                          range("max_batch_rows", max_batch_rows, 1, 4096),
                          range("cpu_batch_rows", cpu_batch_rows, 0, 4096),
                          range("cpu_batch_wait_steps", cpu_batch_wait_steps, 0, 100000),
                          range("cpu_overload_batch_rows", cpu_overload_batch_rows, 0, 4096),
                          range("max_queued_rows", max_queued_rows, 1, 1 << 20),
                          range("max_rows_per_request", max_rows_per_request, 1, 4096),
                          range("max_frames_per_request", max_frames_per_request, 1, 100000),
                          range("max_pending_frames", max_pending_frames, 1, 1024),
                          range("shutdown_grace_s", shutdown_grace_s, 0, 3600),
                          range("max_concurrent_jobs", max_concurrent_jobs, 0, 64),
                          range("training_threads", training_threads, 1, 1024),
                          range("max_queued_jobs", max_queued_jobs, 1, 100000),
                          range("finished_job_retention_h", finished_job_retention_h, 0, 24 * 3650),
                          range("max_n_feat_x_image_size", max_n_feat_x_image_size, 16, 512 * 32),
                          range("tls_reload_s", tls_reload_s, 1, 86400),
                          range("max_concurrent_streams", max_concurrent_streams, 1, 100000),
                          range("keepalive_time_s", keepalive_time_s, 1, 86400),
                          range("keepalive_timeout_s", keepalive_timeout_s, 1, 3600),
                          range("max_connection_idle_s", max_connection_idle_s, 0, 86400 * 7),
                          range("release_memory_s", release_memory_s, 0, 86400),
                          range("release_idle_s", release_idle_s, 0, 86400)}) {
    if (!s.ok()) return s;
  }
  if (max_rows_per_request > max_queued_rows) {
    return Status::InvalidArgument("max_rows_per_request (" + std::to_string(max_rows_per_request) +
                                   ") must not exceed max_queued_rows (" + std::to_string(max_queued_rows) +
                                   "): such a request could never be queued");
  }
  if (max_rows_per_request > max_batch_rows) {
    return Status::InvalidArgument("max_rows_per_request (" + std::to_string(max_rows_per_request) +
                                   ") must not exceed max_batch_rows (" + std::to_string(max_batch_rows) +
                                   "): a request's rows are stepped in one batch");
  }
  if (!(max_queue_wait_s >= 0 && max_queue_wait_s <= 86400)) {
    return Status::InvalidArgument("max_queue_wait_s must be in [0, 86400] seconds, got " +
                                   std::to_string(max_queue_wait_s));
  }
  for (const auto& [key, value] : {std::pair{"precision", &precision}, {"training_precision", &training_precision}}) {
    if (*value != "fp32" && *value != "bf16" && *value != "auto") {
      return Status::InvalidArgument(std::string(key) + " must be fp32, bf16 or auto, got '" + value->substr(0, 32) + "'");
    }
  }
  if (fold_batchnorm != "true" && fold_batchnorm != "false" && fold_batchnorm != "auto") {
    return Status::InvalidArgument("fold_batchnorm must be true, false or auto, got '" + fold_batchnorm.substr(0, 32) +
                                   "'");
  }
  if (bind.empty()) return Status::InvalidArgument("bind must not be empty");
  if (models_dir.empty()) return Status::InvalidArgument("models_dir must not be empty");
  if (data_root.empty()) return Status::InvalidArgument("data_root must not be empty");
  if (state_dir.empty()) return Status::InvalidArgument("state_dir must not be empty");
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return Status::InvalidArgument("tls_cert_file and tls_key_file go together: set both or neither");
  }
  if (!tls_client_ca_file.empty() && tls_cert_file.empty()) {
    return Status::InvalidArgument("tls_client_ca_file needs tls_cert_file and tls_key_file");
  }
  if (max_epochs_x_images < 1) return Status::InvalidArgument("max_epochs_x_images must be at least 1");
  if (metrics_bind.empty()) return Status::InvalidArgument("metrics_bind must not be empty");
  return Status::Ok();
}

namespace {

// Reads one config key into its typed field when the key is present, so that a value of the
// wrong type or out of the field's type's range is refused by name instead of by nlohmann's
// "type must be number" (which names no key) or a silent narrowing (1e12 into an int).
// The first problem is kept; Validate() then checks each field's own range.
class ConfigReader {
 public:
  explicit ConfigReader(const json& j) : j_(j) {}

  const Status& status() const { return status_; }

  void Read(const char* key, std::string* out) {
    const json* v = Find(key);
    if (v == nullptr) return;
    if (!v->is_string()) return Refuse(key, "must be a string", *v);
    *out = v->get<std::string>();
  }
  void Read(const char* key, bool* out) {
    const json* v = Find(key);
    if (v == nullptr) return;
    if (!v->is_boolean()) return Refuse(key, "must be true or false", *v);
    *out = v->get<bool>();
  }
  // true, false or "auto", kept as that text.
  void ReadBoolOrAuto(const char* key, std::string* out) {
    const json* v = Find(key);
    if (v == nullptr) return;
    if (v->is_boolean()) {
      *out = v->get<bool>() ? "true" : "false";
    } else if (v->is_string() && v->get<std::string>() == "auto") {
      *out = "auto";
    } else {
      Refuse(key, "must be true, false or \"auto\"", *v);
    }
  }
  void Read(const char* key, double* out) {
    const json* v = Find(key);
    if (v == nullptr) return;
    if (!v->is_number()) return Refuse(key, "must be a number", *v);
    *out = v->get<double>();
  }
  void Read(const char* key, int* out) {
    int64_t wide = *out;
    Read(key, &wide, std::numeric_limits<int>::min(), std::numeric_limits<int>::max());
    *out = static_cast<int>(wide);
  }
  void Read(const char* key, int64_t* out) {
    Read(key, out, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  }

 private:
  const json* Find(const char* key) const {
    if (!status_.ok()) return nullptr;
    const auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  void Refuse(const char* key, const std::string& rule, const json& v) {
    std::string shown = v.dump();
    if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
    status_ = Status::InvalidArgument(std::string(key) + " " + rule + ", got " + shown);
  }
  // A whole number, written as an integer or as a float with no fractional part (1e6).
  void Read(const char* key, int64_t* out, int64_t lo, int64_t hi) {
    const json* v = Find(key);
    if (v == nullptr) return;
    const std::string rule = "must be a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(hi)) return Refuse(key, rule, *v);
      *out = static_cast<int64_t>(u);
    } else if (v->is_number_integer()) {
      const int64_t i = v->get<int64_t>();
      if (i < lo || i > hi) return Refuse(key, rule, *v);
      *out = i;
    } else if (v->is_number_float()) {
      const double d = v->get<double>();
      if (d != std::floor(d)) return Refuse(key, "must be a whole number", *v);
      // 2^63 is exactly representable; anything at or past it does not fit an int64.
      if (d < static_cast<double>(lo) || d >= 9223372036854775808.0 || d > static_cast<double>(hi)) {
        return Refuse(key, rule, *v);
      }
      *out = static_cast<int64_t>(d);
    } else {
      Refuse(key, "must be a whole number", *v);
    }
  }

  const json& j_;
  Status status_ = Status::Ok();
};

}  // namespace

namespace {

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0 ||
         host.rfind("unix:", 0) == 0;
}

}  // namespace

std::string AppConfig::InsecurePublicRefusal() const {
  if (allow_insecure_public || IsLoopback(bind)) return "";
  std::string missing;
  if (tls_cert_file.empty()) missing = "TLS (tls_cert_file, tls_key_file)";
  if (auth_token_file.empty()) missing += std::string(missing.empty() ? "" : " and ") + "a token file (auth_token_file)";
  if (missing.empty()) return "";
  return "refusing to listen on non-loopback address " + bind + " without " + missing +
         "; set them, or set allow_insecure_public: true to accept the risk";
}

Result<AppConfig> LoadConfig(const std::string& path) {
  Result<std::string> text = ReadFileBounded(path, kMaxTextFileBytes, "a config file");
  if (!text.ok()) return text.status();
  AppConfig c;
  try {
    const json j = json::parse(*text);
    if (!j.is_object()) return Status::InvalidArgument(path + ": config must be a JSON object");
    static const char* known[] = {"bind", "port", "metrics_port", "models_dir", "default_model", "device", "threads",
                                  "max_batch_rows", "cpu_batch_rows", "cpu_batch_wait_steps", "cpu_overload_batch_rows", "max_queued_rows", "max_rows_per_request", "fold_batchnorm", "cuda_graphs", "max_queue_wait_s", "precision", "training_precision",
                                  "max_frames_per_request", "max_pending_frames", "shutdown_grace_s", "data_root",
                                  "state_dir", "max_concurrent_jobs", "training_threads",
                                  "resume_interrupted_jobs", "max_queued_jobs", "max_n_feat_x_image_size", "max_epochs_x_images", "finished_job_retention_h", "auth_token_file", "tls_cert_file",
                                  "tls_key_file", "tls_client_ca_file", "tls_reload_s", "allow_insecure_public",
                                  "reflection", "metrics_bind", "max_concurrent_streams", "keepalive_time_s",
                                  "keepalive_timeout_s", "max_connection_idle_s", "release_memory_s", "release_idle_s",
                                  "comment"};
    for (const auto& item : j.items()) {
      if (std::find(std::begin(known), std::end(known), item.key()) == std::end(known)) {
        return Status::InvalidArgument(path + ": unknown key '" + item.key() + "'");
      }
    }
    ConfigReader read(j);
    read.Read("bind", &c.bind);
    read.Read("port", &c.port);
    read.Read("metrics_port", &c.metrics_port);
    read.Read("models_dir", &c.models_dir);
    read.Read("default_model", &c.default_model);
    read.Read("device", &c.device);
    read.Read("threads", &c.threads);
    read.Read("max_batch_rows", &c.max_batch_rows);
    read.Read("cpu_batch_rows", &c.cpu_batch_rows);
    read.Read("cpu_batch_wait_steps", &c.cpu_batch_wait_steps);
    read.Read("cpu_overload_batch_rows", &c.cpu_overload_batch_rows);
    read.Read("max_queued_rows", &c.max_queued_rows);
    read.Read("max_rows_per_request", &c.max_rows_per_request);
    read.Read("max_frames_per_request", &c.max_frames_per_request);
    read.Read("max_pending_frames", &c.max_pending_frames);
    read.Read("shutdown_grace_s", &c.shutdown_grace_s);
    read.Read("data_root", &c.data_root);
    read.Read("state_dir", &c.state_dir);
    read.Read("max_concurrent_jobs", &c.max_concurrent_jobs);
    read.Read("training_threads", &c.training_threads);
    read.Read("resume_interrupted_jobs", &c.resume_interrupted_jobs);
    read.ReadBoolOrAuto("fold_batchnorm", &c.fold_batchnorm);
    read.Read("cuda_graphs", &c.cuda_graphs);
    read.Read("max_queue_wait_s", &c.max_queue_wait_s);
    read.Read("precision", &c.precision);
    read.Read("training_precision", &c.training_precision);
    read.Read("max_queued_jobs", &c.max_queued_jobs);
    read.Read("max_n_feat_x_image_size", &c.max_n_feat_x_image_size);
    read.Read("max_epochs_x_images", &c.max_epochs_x_images);
    read.Read("finished_job_retention_h", &c.finished_job_retention_h);
    read.Read("auth_token_file", &c.auth_token_file);
    read.Read("tls_cert_file", &c.tls_cert_file);
    read.Read("tls_key_file", &c.tls_key_file);
    read.Read("tls_client_ca_file", &c.tls_client_ca_file);
    read.Read("tls_reload_s", &c.tls_reload_s);
    read.Read("allow_insecure_public", &c.allow_insecure_public);
    read.Read("reflection", &c.reflection);
    read.Read("metrics_bind", &c.metrics_bind);
    read.Read("max_concurrent_streams", &c.max_concurrent_streams);
    read.Read("keepalive_time_s", &c.keepalive_time_s);
    read.Read("keepalive_timeout_s", &c.keepalive_timeout_s);
    read.Read("max_connection_idle_s", &c.max_connection_idle_s);
    read.Read("release_memory_s", &c.release_memory_s);
    read.Read("release_idle_s", &c.release_idle_s);
    if (!read.status().ok()) return Status::InvalidArgument(path + ": " + read.status().message());
  } catch (const json::exception& e) {
    return Status::InvalidArgument(path + ": " + e.what());
  }
  Status s = c.Validate();
  if (!s.ok()) return Status::InvalidArgument(path + ": " + s.message());
  return c;
}

}  // namespace spritediff
