#include "server/job_store.h"

#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "common/file_util.h"
#include "common/image.h"

namespace spritediff {

namespace fs = std::filesystem;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsFinal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED ||
         s == v1::JOB_STATE_INTERRUPTED;
}

Status RecordWriter::Write(const v1::Job& job, uint64_t version) {
  MutexLock lock(mu_);
  if (version <= written_version_) return Status::Ok();  // a newer record is on disk already
  const std::string text = MessageToJson(job);
  if (text.empty()) return Status::Internal("job " + job.id() + ": cannot encode its record");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return Status::IoError(dir_ + ": " + ec.message());
  Status s = WriteFileAtomic((fs::path(dir_) / "job.json").string(), text);
  if (s.ok()) written_version_ = version;
  return s;
}

JobStore::JobStore(std::string state_dir) : state_dir_(std::move(state_dir)) {}

Status JobStore::Init() const {
  std::error_code ec;
  fs::create_directories(fs::path(state_dir_) / "jobs", ec);
  if (ec) return Status::FailedPrecondition("state_dir " + state_dir_ + ": " + ec.message());
  return Status::Ok();
}

std::string JobStore::JobDir(const std::string& id) const { return (fs::path(state_dir_) / "jobs" / id).string(); }

std::string JobStore::FormatId(uint64_t n) {
  char id[32];
  std::snprintf(id, sizeof(id), "job-%06llu", static_cast<unsigned long long>(n));
  return id;
}

std::vector<JobStore::Loaded> JobStore::LoadAll(uint64_t* next_id) const {
  std::error_code ec;
  std::vector<fs::path> dirs;
  for (const auto& d : fs::directory_iterator(fs::path(state_dir_) / "jobs", ec)) {
    std::error_code is_dir_ec;
    if (d.is_directory(is_dir_ec)) dirs.push_back(d.path());
  }
  std::sort(dirs.begin(), dirs.end());
  std::vector<Loaded> out;
  for (const fs::path& dir : dirs) {
    unsigned long long dir_n = 0;
    if (std::sscanf(dir.filename().c_str(), "job-%llu", &dir_n) == 1) *next_id = std::max<uint64_t>(*next_id, dir_n + 1);
    Result<std::string> text = ReadFileBounded((dir / "job.json").string(), kMaxTextFileBytes, "a job.json");
    if (text.status().code() == Status::Code::kNotFound) continue;  // a directory without a record yet
    if (!text.ok()) {
      spdlog::warn("jobs: skipping {}: {}", dir.string(), text.status().message());
      continue;
    }
    Loaded loaded;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(*text, &loaded.job, options).ok() ||
        loaded.job.id() != dir.filename().string()) {
      spdlog::warn("jobs: skipping {}: unreadable job.json", dir.string());
      continue;
    }
    loaded.dir = dir.string();
    unsigned long long n = 0;
    if (std::sscanf(loaded.job.id().c_str(), "job-%llu", &n) == 1) *next_id = std::max<uint64_t>(*next_id, n + 1);
    const fs::path grid = dir / "model" / "samples.png";
    std::error_code grid_ec;
    if (loaded.job.progress().checkpoint_epoch() > 0 && fs::exists(grid, grid_ec)) {
      Result<std::string> png = ReadFileBounded(grid.string(), kMaxPngFileBytes, "a sample grid");
      if (png.ok()) loaded.grid_png = std::make_shared<const std::string>(std::move(*png));
    }
    out.push_back(std::move(loaded));
  }
  return out;
}

}  // namespace spritediff
