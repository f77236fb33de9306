#include "common/config.h"

#include <fstream>
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
  std::ifstream in(path);
  if (!in) return Status::NotFound(path + ": cannot open config file");
  AppConfig c;
  try {
    const json j = json::parse(in);
    if (!j.is_object()) return Status::InvalidArgument(path + ": config must be a JSON object");
    static const char* known[] = {"bind", "port", "metrics_port", "models_dir", "default_model", "device", "threads",
                                  "max_batch_rows", "max_queued_rows", "max_rows_per_request", "fold_batchnorm", "cuda_graphs", "max_queue_wait_s", "precision", "training_precision",
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
    c.bind = j.value("bind", c.bind);
    c.port = j.value("port", c.port);
    c.metrics_port = j.value("metrics_port", c.metrics_port);
    c.models_dir = j.value("models_dir", c.models_dir);
    c.default_model = j.value("default_model", c.default_model);
    c.device = j.value("device", c.device);
    c.threads = j.value("threads", c.threads);
    c.max_batch_rows = j.value("max_batch_rows", c.max_batch_rows);
    c.max_queued_rows = j.value("max_queued_rows", c.max_queued_rows);
    c.max_rows_per_request = j.value("max_rows_per_request", c.max_rows_per_request);
    c.max_frames_per_request = j.value("max_frames_per_request", c.max_frames_per_request);
    c.max_pending_frames = j.value("max_pending_frames", c.max_pending_frames);
    c.shutdown_grace_s = j.value("shutdown_grace_s", c.shutdown_grace_s);
    c.data_root = j.value("data_root", c.data_root);
    c.state_dir = j.value("state_dir", c.state_dir);
    c.max_concurrent_jobs = j.value("max_concurrent_jobs", c.max_concurrent_jobs);
    c.training_threads = j.value("training_threads", c.training_threads);
    c.resume_interrupted_jobs = j.value("resume_interrupted_jobs", c.resume_interrupted_jobs);
    c.fold_batchnorm = j.value("fold_batchnorm", c.fold_batchnorm);
    c.cuda_graphs = j.value("cuda_graphs", c.cuda_graphs);
    c.max_queue_wait_s = j.value("max_queue_wait_s", c.max_queue_wait_s);
    c.precision = j.value("precision", c.precision);
    c.training_precision = j.value("training_precision", c.training_precision);
    c.max_queued_jobs = j.value("max_queued_jobs", c.max_queued_jobs);
    c.max_n_feat_x_image_size = j.value("max_n_feat_x_image_size", c.max_n_feat_x_image_size);
    c.max_epochs_x_images = j.value("max_epochs_x_images", c.max_epochs_x_images);
    c.finished_job_retention_h = j.value("finished_job_retention_h", c.finished_job_retention_h);
    c.auth_token_file = j.value("auth_token_file", c.auth_token_file);
    c.tls_cert_file = j.value("tls_cert_file", c.tls_cert_file);
    c.tls_key_file = j.value("tls_key_file", c.tls_key_file);
    c.tls_client_ca_file = j.value("tls_client_ca_file", c.tls_client_ca_file);
    c.tls_reload_s = j.value("tls_reload_s", c.tls_reload_s);
    c.allow_insecure_public = j.value("allow_insecure_public", c.allow_insecure_public);
    c.reflection = j.value("reflection", c.reflection);
    c.metrics_bind = j.value("metrics_bind", c.metrics_bind);
    c.max_concurrent_streams = j.value("max_concurrent_streams", c.max_concurrent_streams);
    c.keepalive_time_s = j.value("keepalive_time_s", c.keepalive_time_s);
    c.keepalive_timeout_s = j.value("keepalive_timeout_s", c.keepalive_timeout_s);
    c.max_connection_idle_s = j.value("max_connection_idle_s", c.max_connection_idle_s);
    c.release_memory_s = j.value("release_memory_s", c.release_memory_s);
    c.release_idle_s = j.value("release_idle_s", c.release_idle_s);
  } catch (const json::exception& e) {
    return Status::InvalidArgument(path + ": " + e.what());
  }
  Status s = c.Validate();
  if (!s.ok()) return Status::InvalidArgument(path + ": " + s.message());
  return c;
}

}  // namespace spritediff
