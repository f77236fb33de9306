// Where training jobs live on disk: <state_dir>/jobs/<id>/job.json (the v1::Job record, JSON,
// written durably and atomically), job ids, and reading the records back after a restart.
// The store holds no lock of its own beyond what makes writes of one job's record ordered:
// callers write after releasing their own lock, with the version the record had.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/mutex.h"
#include "common/proto_json.h"
#include "common/thread_annotations.h"
#include "spritediff/v1/training.pb.h"

namespace spritediff {

int64_t NowUnixMs();
bool IsFinal(v1::JobState state);

// Orders the writes of one job's record: a record older than the one on disk is never written
// over it, whichever thread gets there first.
class RecordWriter {
 public:
  explicit RecordWriter(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }
  // Writes job as dir/job.json unless a newer version was written already.
  Status Write(const v1::Job& job, uint64_t version) LOCKS_EXCLUDED(mu_);

 private:
  const std::string dir_;
  Mutex mu_;
  uint64_t written_version_ GUARDED_BY(mu_) = 0;
};

class JobStore {
 public:
  explicit JobStore(std::string state_dir);

  // Creates <state_dir>/jobs.
  Status Init() const;
  // The directory of a job id.
  std::string JobDir(const std::string& id) const;

  struct Loaded {
    v1::Job job;
    std::string dir;
    std::shared_ptr<const std::string> grid_png;  // the last checkpoint's sample grid, if any
  };
  // Every readable record under jobs/, sorted by id; *next_id is raised past every id seen
  // (directory names included, so an unreadable record never has its id reused).
  std::vector<Loaded> LoadAll(uint64_t* next_id) const;
  // "job-000042".
  static std::string FormatId(uint64_t n);

 private:
  const std::string state_dir_;
};

}  // namespace spritediff
