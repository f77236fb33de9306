// The models-dir watcher's decisions, step by step and without threads: what is loaded, when
// (only complete directories, only once they stop changing), what is retired, and that a
// directory that failed to load is not tried again until it changes. And the fingerprint that
// tells a complete directory from a half-written one.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "server/model_registry.h"
#include "server/model_watcher.h"

namespace spritediff {
namespace {

using Clock = ModelDirTracker::Clock;
using Names = std::vector<std::string>;

TEST(ModelDirTracker, LoadsACompleteDirectoryOnceItHasSettled) {
  ModelDirTracker tracker(std::chrono::seconds(1));
  const Clock::time_point t0 = Clock::now();
  std::map<std::string, std::string> served = {{"old", "a"}};
  // Seen for the first time: wait.
  ModelDirChanges c = tracker.Update(served, {{"old", "a"}, {"new", "n1"}}, t0);
  EXPECT_TRUE(c.load.empty());
  EXPECT_TRUE(tracker.Settling());
  // Changed again within the settling time (a copy still writing): the wait starts over.
  c = tracker.Update(served, {{"old", "a"}, {"new", "n2"}}, t0 + std::chrono::milliseconds(800));
  EXPECT_TRUE(c.load.empty());
  c = tracker.Update(served, {{"old", "a"}, {"new", "n2"}}, t0 + std::chrono::milliseconds(1500));
  EXPECT_TRUE(c.load.empty());
  c = tracker.Update(served, {{"old", "a"}, {"new", "n2"}}, t0 + std::chrono::milliseconds(1900));
  EXPECT_EQ(c.load, Names{"new"});
  EXPECT_TRUE(c.retire.empty());
  served["new"] = "n2";
  c = tracker.Update(served, {{"old", "a"}, {"new", "n2"}}, t0 + std::chrono::seconds(5));
  EXPECT_TRUE(c.load.empty());
  EXPECT_FALSE(tracker.Settling());
}

TEST(ModelDirTracker, HalfWrittenDirectoriesAreNeverLoaded) {
  ModelDirTracker tracker(std::chrono::seconds(0));
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < 3; ++i) {
    ModelDirChanges c = tracker.Update({}, {{"half", ""}}, t0 + std::chrono::seconds(i));
    EXPECT_TRUE(c.load.empty());
  }
  // A served model whose files are being replaced in place (incomplete for a moment) is kept.
  ModelDirChanges c = tracker.Update({{"half", "x"}}, {{"half", ""}}, t0 + std::chrono::seconds(9));
  EXPECT_TRUE(c.load.empty());
  EXPECT_TRUE(c.retire.empty());
}

TEST(ModelDirTracker, AChangedServedModelIsReloadedAndAMissingOneRetiredAfterSettling) {
  ModelDirTracker tracker(std::chrono::seconds(1));
  const Clock::time_point t0 = Clock::now();
  const std::map<std::string, std::string> served = {{"m", "v1"}, {"gone", "g"}};
  ModelDirChanges c = tracker.Update(served, {{"m", "v2"}}, t0);
  EXPECT_TRUE(c.load.empty());
  EXPECT_TRUE(c.retire.empty());  // missing for less than the settling time: a rename in progress
  // Back before the settling time passed: nothing is retired.
  c = tracker.Update(served, {{"m", "v2"}, {"gone", "g"}}, t0 + std::chrono::milliseconds(500));
  EXPECT_TRUE(c.retire.empty());
  c = tracker.Update(served, {{"m", "v2"}}, t0 + std::chrono::milliseconds(1200));
  EXPECT_EQ(c.load, Names{"m"});
  EXPECT_TRUE(c.retire.empty());
  c = tracker.Update(served, {{"m", "v2"}}, t0 + std::chrono::milliseconds(2300));
  EXPECT_EQ(c.retire, Names{"gone"});
}

TEST(ModelDirTracker, AFailedLoadWaitsForTheDirectoryToChange) {
  ModelDirTracker tracker(std::chrono::seconds(0));
  const Clock::time_point t0 = Clock::now();
  tracker.Update({}, {{"bad", "f1"}}, t0);
  ModelDirChanges c = tracker.Update({}, {{"bad", "f1"}}, t0 + std::chrono::seconds(1));
  ASSERT_EQ(c.load, Names{"bad"});
  tracker.MarkFailed("bad", "f1");
  for (int i = 2; i < 5; ++i) EXPECT_TRUE(tracker.Update({}, {{"bad", "f1"}}, t0 + std::chrono::seconds(i)).load.empty());
  tracker.Update({}, {{"bad", "f2"}}, t0 + std::chrono::seconds(5));
  EXPECT_EQ(tracker.Update({}, {{"bad", "f2"}}, t0 + std::chrono::seconds(6)).load, Names{"bad"});
}

TEST(ModelDirFingerprint, IsEmptyUntilTheWeightsModelJsonNamesExistAndChangesWithThem) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("spritediff-fingerprint-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  EXPECT_EQ(ModelDirFingerprint(dir.string()), "");  // no model.json
  std::ofstream(dir / "model.json") << R"({"weights": "weights-1.pt"})";
  EXPECT_EQ(ModelDirFingerprint(dir.string()), "");  // its weights are not there
  std::ofstream(dir / "weights-1.pt") << "1234";
  const std::string complete = ModelDirFingerprint(dir.string());
  EXPECT_NE(complete, "");
  EXPECT_EQ(ModelDirFingerprint(dir.string()), complete);
  std::ofstream(dir / "weights-1.pt", std::ios::app) << "5678";
  EXPECT_NE(ModelDirFingerprint(dir.string()), complete);
  std::ofstream(dir / "model.json") << "{ not json";
  EXPECT_EQ(ModelDirFingerprint(dir.string()), "");
  // ScanModelsDir lists it (a model directory, incomplete), skips dot-directories.
  fs::create_directories(dir / "models" / ".hidden");
  std::ofstream(dir / "models" / ".hidden" / "model.json") << "{}";
  fs::create_directories(dir / "models" / "m");
  std::ofstream(dir / "models" / "m" / "model.json") << "{}";
  Result<std::map<std::string, std::string>> scanned = ScanModelsDir((dir / "models").string());
  ASSERT_TRUE(scanned.ok()) << scanned.status().message();
  EXPECT_EQ(scanned->size(), 1u);
  EXPECT_EQ(scanned->count("m"), 1u);
  // A directory that cannot be listed is an error, not an empty directory (which would retire
  // every served model).
  EXPECT_FALSE(ScanModelsDir((dir / "no-such-models-dir").string()).ok());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace spritediff
