#include "server/startup_sweep.h"

#include <filesystem>
#include <fstream>
#include <vector>

#include "core/checkpoint.h"

namespace spritediff {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxDepth = 4;  // models/<m>/file, state/<job>/model/file

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

uint64_t SizeOf(const fs::path& p) {
  std::error_code ec;
  uint64_t total = 0;
  if (fs::is_directory(fs::symlink_status(p, ec))) {
    for (auto it = fs::recursive_directory_iterator(p, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (it->is_regular_file(ec)) total += it->file_size(ec);
    }
  } else {
    total = fs::file_size(p, ec);
  }
  return total;
}

void Remove(const fs::path& p, uint64_t* bytes) {
  std::error_code ec;
  const uint64_t size = SizeOf(p);
  if (fs::remove_all(p, ec) > 0 && !ec) *bytes += size;
}

// Removes weights-*.pt files in dir that its model.json does not name.
void SweepOrphanWeights(const fs::path& dir, SweepReport* report) {
  // An unreadable model.json is the registry's to report; keep every file.
  Result<std::string> weights = ReadModelWeightsName(dir.string());
  if (!weights.ok() || weights->empty()) return;
  const std::string& named = *weights;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name != named && name.rfind("weights-", 0) == 0 && EndsWith(name, ".pt") &&
        it->symlink_status(ec).type() == fs::file_type::regular) {
      Remove(it->path(), &report->bytes);
      report->orphan_weights++;
    }
  }
}

void SweepTree(const fs::path& root, bool publish_dirs, SweepReport* report) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return;
  std::vector<fs::path> doomed;
  std::vector<fs::path> model_dirs;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const fs::file_type type = it->symlink_status(ec).type();
    if (type == fs::file_type::regular && EndsWith(name, ".tmp")) {
      doomed.push_back(it->path());
    } else if (type == fs::file_type::directory) {
      if (publish_dirs && it.depth() == 0 && name.size() > 1 && name[0] == '.' && name.find(".tmp-") != std::string::npos) {
        doomed.push_back(it->path());
        it.disable_recursion_pending();
      } else if (it.depth() + 1 >= kMaxDepth) {
        it.disable_recursion_pending();
      }
      if (fs::exists(it->path() / "model.json", ec)) model_dirs.push_back(it->path());
    }
  }
  for (const fs::path& p : doomed) {
    Remove(p, &report->bytes);
    report->temporaries++;
  }
  for (const fs::path& dir : model_dirs) {
    if (fs::exists(dir, ec)) SweepOrphanWeights(dir, report);
  }
}

}  // namespace

SweepReport SweepStartup(const std::string& models_dir, const std::string& state_dir) {
  SweepReport report;
  SweepTree(models_dir, /*publish_dirs=*/true, &report);
  SweepTree(state_dir, /*publish_dirs=*/false, &report);
  return report;
}

}  // namespace spritediff
