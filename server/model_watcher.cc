#include "server/model_watcher.h"

#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>

#include "server/model_registry.h"

namespace spritediff {

namespace fs = std::filesystem;

Result<std::map<std::string, std::string>> ScanModelsDir(const std::string& models_dir) {
  Result<std::vector<std::string>> names = ModelDirNames(models_dir);
  if (!names.ok()) return names.status();
  std::map<std::string, std::string> found;
  for (const std::string& name : *names) found[name] = ModelDirFingerprint((fs::path(models_dir) / name).string());
  return found;
}

ModelDirChanges ModelDirTracker::Update(const std::map<std::string, std::string>& served,
                                        const std::map<std::string, std::string>& scanned, Clock::time_point now) {
  ModelDirChanges changes;
  for (const auto& [name, fingerprint] : scanned) {
    missing_.erase(name);
    const auto is_served = served.find(name);
    const auto failed = failed_.find(name);
    if (failed != failed_.end() && failed->second != fingerprint) failed_.erase(failed);
    const bool wanted = !fingerprint.empty() && (is_served == served.end() || is_served->second != fingerprint) &&
                        failed_.count(name) == 0;
    if (!wanted) {
      seen_.erase(name);
      continue;
    }
    auto seen = seen_.find(name);
    if (seen == seen_.end() || seen->second.fingerprint != fingerprint) {
      seen_[name] = Seen{fingerprint, now};  // changed since the last look: settle again
    } else if (now - seen->second.since >= settle_) {
      changes.load.push_back(name);
      seen_.erase(seen);
    }
  }
  for (auto it = seen_.begin(); it != seen_.end();) it = scanned.count(it->first) ? std::next(it) : seen_.erase(it);
  for (const auto& [name, fingerprint] : served) {
    if (scanned.count(name)) continue;
    auto missing = missing_.emplace(name, now).first;
    if (now - missing->second >= settle_) {
      changes.retire.push_back(name);
      missing_.erase(missing);
    }
  }
  for (auto it = missing_.begin(); it != missing_.end();) it = served.count(it->first) ? std::next(it) : missing_.erase(it);
  return changes;
}

ModelWatcher::ModelWatcher(ModelRegistry& registry, std::string models_dir, std::chrono::milliseconds poll,
                           std::chrono::milliseconds settle)
    : registry_(registry), models_dir_(std::move(models_dir)), poll_(poll), tracker_(settle) {}

ModelWatcher::~ModelWatcher() { Stop(); }

void ModelWatcher::Start() {
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) {
    spdlog::warn("models_dir {}: inotify unavailable ({}); rescanning every {} ms", models_dir_, std::strerror(errno),
                 poll_.count());
  }
  WatchDirectory(models_dir_);
  thread_ = std::thread([this] { Loop(); });
  spdlog::info("watching {} for models (inotify {}, rescan every {} ms)", models_dir_, inotify_fd_ >= 0 ? "on" : "off",
               poll_.count());
}

void ModelWatcher::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
  inotify_fd_ = -1;
}

void ModelWatcher::WatchDirectory(const std::string& path) {
  if (inotify_fd_ < 0) return;
  // Adding a watch on a path already watched only refreshes it; a removed directory drops its own.
  const uint32_t mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_ONLYDIR;
  if (inotify_add_watch(inotify_fd_, path.c_str(), mask) < 0 && errno != ENOENT) {
    spdlog::debug("inotify watch on {}: {}", path, std::strerror(errno));
  }
}

void ModelWatcher::Loop() {
  using Clock = std::chrono::steady_clock;
  // Short waits, so that Stop never waits long and a settling change is looked at again soon.
  constexpr std::chrono::milliseconds kTick{200};
  Clock::time_point next_scan = Clock::now();  // the first look right away
  while (!stop_) {
    bool changed = false;
    if (inotify_fd_ >= 0) {
      pollfd p{inotify_fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(kTick.count())) > 0) {
        alignas(inotify_event) char buf[4096];
        while (::read(inotify_fd_, buf, sizeof buf) > 0) changed = true;  // drained: a rescan reads the truth
      }
    } else {
      std::this_thread::sleep_for(kTick);
    }
    const Clock::time_point now = Clock::now();
    if (changed || now >= next_scan || tracker_.Settling()) {
      try {
        Rescan();
      } catch (const std::exception& e) {  // nothing crosses the thread's boundary
        spdlog::error("models_dir {}: rescan failed: {}", models_dir_, e.what());
      }
      next_scan = now + poll_;
    }
    registry_.ReapRetired();
  }
}

void ModelWatcher::Rescan() {
  Result<std::map<std::string, std::string>> listed = ScanModelsDir(models_dir_);
  // A listing that fails (a network volume gone for a moment) is no evidence that the models
  // are gone: nothing is loaded or retired until a listing succeeds again.
  if (!listed.ok()) {
    if (!listing_failed_) spdlog::warn("models_dir: {}; keeping the models served", listed.status().message());
    listing_failed_ = true;
    return;
  }
  listing_failed_ = false;
  const std::map<std::string, std::string>& scanned = *listed;
  for (const auto& [name, fingerprint] : scanned) WatchDirectory((fs::path(models_dir_) / name).string());
  const ModelDirChanges changes = tracker_.Update(registry_.Fingerprints(), scanned, ModelDirTracker::Clock::now());
  for (const std::string& name : changes.load) {
    const std::string dir = (fs::path(models_dir_) / name).string();
    const bool replacing = registry_.Find(name) != nullptr;
    Status added = registry_.Add(name, dir);
    if (added.ok()) {
      spdlog::info("models_dir: {} model {} from {}", replacing ? "swapped in" : "added", name, dir);
    } else {
      tracker_.MarkFailed(name, scanned.at(name));
      spdlog::warn("models_dir: not loading {} (until its files change): {}", dir, added.message());
    }
  }
  for (const std::string& name : changes.retire) {
    Status removed = registry_.Remove(name);
    if (removed.ok()) spdlog::info("models_dir: {} is gone; retiring model {} once its requests finish", name, name);
  }
}

}  // namespace spritediff
