// The daemon's configuration: one JSON file (configs/default.json) parsed into one typed
// struct with defaults; command-line flags override fields after parsing.
#pragma once

#include <string>

#include "common/status.h"

namespace spritediff {

struct AppConfig {
  std::string bind = "127.0.0.1";
  int port = 50051;
  int metrics_port = 0;          // Prometheus /metrics over HTTP on bind:metrics_port; 0 = off
  std::string models_dir = "models";
  std::string default_model = "sprites16";
  std::string device = "auto";   // auto | cpu | cuda | cuda:N
  int threads = 0;               // intra-op threads; 0 = all cores
  // Batching.
  int max_batch_rows = 64;       // rows in one denoising forward (guidance halves not counted)
  int max_queued_rows = 1024;    // rows waiting for admission; past it, RESOURCE_EXHAUSTED
  int max_rows_per_request = 64; // upper bound of SampleRequest.count
  // Frames.
  int max_frames_per_request = 100;  // a finer frame_every is coarsened to stay within this
  int max_pending_frames = 4;        // frames buffered for a slow reader before older ones drop
  int shutdown_grace_s = 10;
  // Training jobs (service Training).
  std::string data_root = "data";        // SubmitJob datasets are folders under here; nothing outside
  std::string state_dir = "state";       // job records, checkpoints and staging models
  int max_concurrent_jobs = 1;           // jobs training at once; more wait QUEUED (0 = Training disabled)
  int training_threads = 1;              // intra-op threads each job uses; serving keeps `threads`
  bool resume_interrupted_jobs = true;   // on restart, resume jobs the daemon stopped mid-run
                                         // (false: mark them INTERRUPTED)

  Status Validate() const;
};

// Reads path (missing file -> error) and fills fields present in it over the defaults.
Result<AppConfig> LoadConfig(const std::string& path);

}  // namespace spritediff
