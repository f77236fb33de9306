// End-to-end: training jobs over gRPC on the real daemon, with a small copy of the real
// sprite dataset (4 images per class), a tiny network and few epochs.
#include <sys/stat.h>

#include "common/image.h"
#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

using v1::Job;
using v1::JobSpec;

// fp32 training whatever the CPU (the default "auto" is bf16 only where the CPU has it).
constexpr const char* kConfig =
    R"({"max_concurrent_jobs": 1, "training_threads": 1, "shutdown_grace_s": 5, "training_precision": "fp32"})";

JobSpec TinySpec(const std::string& name, int epochs) {
  JobSpec spec;
  spec.set_model_name(name);
  spec.set_dataset("mini");
  spec.set_image_size(16);
  spec.set_n_feat(8);
  spec.set_epochs(static_cast<uint32_t>(epochs));
  spec.set_batch_size(8);
  spec.set_checkpoint_every(2);
  spec.set_seed(3);
  return spec;
}

grpc::Status Submit(Daemon& d, const JobSpec& spec, Job* job) {
  auto stub = v1::Training::NewStub(d.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub->SubmitJob(&ctx, spec, job);
}

Job Get(Daemon& d, const std::string& id) {
  auto stub = v1::Training::NewStub(d.channel());
  grpc::ClientContext ctx;
  v1::JobRef ref;
  ref.set_id(id);
  Job job;
  grpc::Status s = stub->GetJob(&ctx, ref, &job);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return job;
}

// Polls until pred(job) holds; false after timeout_s.
template <typename Pred>
bool WaitFor(Daemon& d, const std::string& id, Pred pred, double timeout_s = 120) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000));
  while (std::chrono::steady_clock::now() < end) {
    if (pred(Get(d, id))) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

struct Watched {
  grpc::Status status;
  std::vector<v1::JobEvent> events;
};

Watched Watch(Daemon& d, const std::string& id, double timeout_s = 300) {
  auto stub = v1::Training::NewStub(d.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000)));
  v1::JobRef ref;
  ref.set_id(id);
  auto reader = stub->WatchJob(&ctx, ref);
  Watched w;
  v1::JobEvent ev;
  while (reader->Read(&ev)) w.events.push_back(ev);
  w.status = reader->Finish();
  return w;
}

bool Served(Daemon& d, const std::string& name) {
  auto stub = v1::Sprites::NewStub(d.channel());
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  EXPECT_TRUE(stub->ListModels(&ctx, {}, &resp).ok());
  for (const auto& m : resp.models()) {
    if (m.name() == name) return true;
  }
  return false;
}

class TrainingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon();
    daemon_->Start(kConfig);
    CopyMiniDataset(daemon_->root() / "data", "mini", 4);
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
    delete daemon_;
  }
  static Daemon* daemon_;
};
Daemon* TrainingTest::daemon_ = nullptr;

TEST_F(TrainingTest, SubmitWatchToTheEndThenSampleTheNewModelByName) {
  Job job;
  ASSERT_TRUE(Submit(*daemon_, TinySpec("mini-a", 4), &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.spec().lr(), 1e-3f);  // defaults are filled in and reported
  EXPECT_EQ(job.spec().class_balance(), "none");
  Watched w = Watch(*daemon_, job.id());
  ASSERT_TRUE(w.status.ok()) << w.status.error_message();
  ASSERT_FALSE(w.events.empty());
  const Job& last = w.events.back().job();
  ASSERT_EQ(last.state(), v1::JOB_STATE_SUCCEEDED) << last.message() << "\n" << daemon_->Log();
  EXPECT_EQ(last.progress().epoch(), 4u);
  EXPECT_EQ(last.progress().checkpoint_epoch(), 4u);
  EXPECT_EQ(last.epoch_losses_size(), 4);
  EXPECT_GT(last.finished_unix_ms(), 0);
  // Grids came with the checkpoints (epochs 2 and 4; a slow reader may skip the first) and decode.
  int grids = 0;
  for (const auto& ev : w.events) {
    if (ev.sample_grid_png().empty()) continue;
    ++grids;
    Result<Image> grid = DecodePng(ev.sample_grid_png());
    ASSERT_TRUE(grid.ok());
    EXPECT_GT(grid->width, 16 * 4);  // 8 sprites per row, upscaled
    EXPECT_TRUE(ev.grid_epoch() == 2 || ev.grid_epoch() == 4) << ev.grid_epoch();
  }
  EXPECT_GE(grids, 1);

  ASSERT_TRUE(Served(*daemon_, "mini-a"));
  auto sprites = v1::Sprites::NewStub(daemon_->channel());
  grpc::ClientContext ctx;
  v1::SampleRequest req;
  req.set_model("mini-a");
  req.set_count(2);
  req.set_steps(5);
  req.add_labels()->set_label("food");
  auto reader = sprites->Sample(&ctx, req);
  v1::SampleEvent ev;
  int images = 0;
  while (reader->Read(&ev)) {
    if (!ev.has_result()) continue;
    for (const auto& png : ev.result().images()) {
      Result<Image> img = DecodePng(png);
      ASSERT_TRUE(img.ok());
      EXPECT_EQ(img->width, 16);
      ++images;
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(images, 2);
  // The published model is a normal model directory, and the name is now taken.
  EXPECT_TRUE(fs::exists(daemon_->root() / "models" / "mini-a" / "model.json"));
  std::ifstream card(daemon_->root() / "models" / "mini-a" / "README.md");
  const std::string card_text((std::istreambuf_iterator<char>(card)), std::istreambuf_iterator<char>());
  EXPECT_NE(card_text.find("spritectl train submit --name mini-a --dataset mini"), std::string::npos) << card_text;
  EXPECT_NE(card_text.find(" --precision fp32"), std::string::npos) << "the daemon's training_precision: " << card_text;
  EXPECT_TRUE(fs::exists(daemon_->root() / "models" / "mini-a" / "samples.png"));
  Job again;
  EXPECT_EQ(Submit(*daemon_, TinySpec("mini-a", 4), &again).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  // A watcher arriving after the end gets the final state and the stream ends.
  Watched late = Watch(*daemon_, job.id());
  ASSERT_TRUE(late.status.ok());
  ASSERT_EQ(late.events.size(), 1u);
  EXPECT_EQ(late.events[0].job().state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(TrainingTest, CancelQueuedAndRunningJobs) {
  Job running, queued;
  ASSERT_TRUE(Submit(*daemon_, TinySpec("long-run", 100000), &running).ok());
  ASSERT_TRUE(Submit(*daemon_, TinySpec("waits", 2), &queued).ok());  // one training slot: it queues
  auto stub = v1::Training::NewStub(daemon_->channel());
  {
    grpc::ClientContext ctx;
    v1::JobRef ref;
    ref.set_id(queued.id());
    Job out;
    ASSERT_TRUE(stub->CancelJob(&ctx, ref, &out).ok());
    EXPECT_EQ(out.state(), v1::JOB_STATE_CANCELLED);
  }
  ASSERT_TRUE(WaitFor(*daemon_, running.id(), [](const Job& j) { return j.progress().step() > 0; }));
  {
    grpc::ClientContext ctx;
    v1::JobRef ref;
    ref.set_id(running.id());
    Job out;
    // CancelJob answers at once: the job is asked to stop and says so; it ends CANCELLED at
    // the trainer's next step, which watchers and GetJob then show.
    ASSERT_TRUE(stub->CancelJob(&ctx, ref, &out).ok());
    EXPECT_TRUE(out.cancel_requested());
    EXPECT_TRUE(out.state() == v1::JOB_STATE_RUNNING || out.state() == v1::JOB_STATE_CANCELLED) << out.message();
    EXPECT_TRUE(Get(*daemon_, running.id()).cancel_requested());
  }
  ASSERT_TRUE(WaitFor(*daemon_, running.id(), [](const Job& j) { return j.state() == v1::JOB_STATE_CANCELLED; }));
  {
    grpc::ClientContext ctx;
    v1::JobRef ref;
    ref.set_id(running.id());
    Job out;
    EXPECT_EQ(stub->CancelJob(&ctx, ref, &out).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  EXPECT_FALSE(Served(*daemon_, "long-run"));
  EXPECT_FALSE(Served(*daemon_, "waits"));
  EXPECT_FALSE(fs::exists(daemon_->root() / "models" / "long-run"));
  // The slot is free again: a new job runs to the end.
  Job next;
  ASSERT_TRUE(Submit(*daemon_, TinySpec("after-cancel", 2), &next).ok());
  Watched w = Watch(*daemon_, next.id());
  ASSERT_TRUE(w.status.ok());
  EXPECT_EQ(w.events.back().job().state(), v1::JOB_STATE_SUCCEEDED) << w.events.back().job().message();
}

TEST_F(TrainingTest, BadSpecsGetTheRightCodes) {
  fs::create_directories(daemon_->root() / "data" / "empty");
  fs::create_directories(daemon_->root() / "outside" / "x");
  fs::create_directory_symlink(daemon_->root() / "outside", daemon_->root() / "data" / "link-out");
  // A dataset whose class folder links outside the root, and one holding a FIFO.
  CopyMiniDataset(daemon_->root() / "data", "sneaky", 4);
  fs::remove_all(daemon_->root() / "data" / "sneaky" / "food");
  CopyMiniDataset(daemon_->root() / "outside", "copy", 4);
  fs::create_directory_symlink(daemon_->root() / "outside" / "copy" / "food", daemon_->root() / "data" / "sneaky" / "food");
  CopyMiniDataset(daemon_->root() / "data", "fifo", 4);
  ASSERT_EQ(mkfifo((daemon_->root() / "data" / "fifo" / "food" / "pipe.png").c_str(), 0644), 0);
  struct Case {
    std::function<void(JobSpec&)> edit;
    grpc::StatusCode code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](JobSpec& s) { s.set_model_name("../evil"); }, grpc::StatusCode::INVALID_ARGUMENT, "model_name"},
      {[](JobSpec& s) { s.set_model_name("a/b"); }, grpc::StatusCode::INVALID_ARGUMENT, "model_name"},
      {[](JobSpec& s) { s.set_model_name(""); }, grpc::StatusCode::INVALID_ARGUMENT, "model_name"},
      {[](JobSpec& s) { s.set_model_name("tiny"); }, grpc::StatusCode::ALREADY_EXISTS, "tiny"},
      {[](JobSpec& s) { s.set_dataset("../outside/x"); }, grpc::StatusCode::PERMISSION_DENIED, "data root"},
      {[](JobSpec& s) { s.set_dataset("/etc"); }, grpc::StatusCode::PERMISSION_DENIED, "data root"},
      {[](JobSpec& s) { s.set_dataset("link-out/x"); }, grpc::StatusCode::PERMISSION_DENIED, "data root"},
      {[](JobSpec& s) { s.set_dataset(""); }, grpc::StatusCode::INVALID_ARGUMENT, "dataset"},
      {[](JobSpec& s) { s.set_image_size(24); }, grpc::StatusCode::INVALID_ARGUMENT, "image_size"},
      {[](JobSpec& s) { s.set_epochs(1000000); }, grpc::StatusCode::INVALID_ARGUMENT, "epochs"},
      {[](JobSpec& s) { s.set_batch_size(1); }, grpc::StatusCode::INVALID_ARGUMENT, "batch_size"},
      {[](JobSpec& s) { s.set_lr(-1); }, grpc::StatusCode::INVALID_ARGUMENT, "lr"},
      {[](JobSpec& s) { s.set_ema_decay(1); }, grpc::StatusCode::INVALID_ARGUMENT, "ema_decay"},
      {[](JobSpec& s) { s.set_context_dropout(2); }, grpc::StatusCode::INVALID_ARGUMENT, "context_dropout"},
      {[](JobSpec& s) { s.set_class_balance("log"); }, grpc::StatusCode::INVALID_ARGUMENT, "class_balance"},
      {[](JobSpec& s) { s.set_base_model("ghost"); }, grpc::StatusCode::NOT_FOUND, "base_model"},
      {[](JobSpec& s) { s.set_base_model("tiny"); }, grpc::StatusCode::INVALID_ARGUMENT, "n_feat"},  // tiny: 16
      // A stat on the RPC thread: a dataset that is not there is refused before the job exists.
      {[](JobSpec& s) { s.set_dataset("nope"); }, grpc::StatusCode::FAILED_PRECONDITION, "dataset 'nope'"},
  };
  for (const Case& c : cases) {
    JobSpec spec = TinySpec("bad-spec", 2);
    c.edit(spec);
    Job job;
    grpc::Status s = Submit(*daemon_, spec, &job);
    EXPECT_EQ(s.error_code(), c.code) << spec.ShortDebugString() << " -> " << s.error_message();
    EXPECT_NE(s.error_message().find(c.needle), std::string::npos) << s.error_message();
  }
  // What only reading the dataset can tell is found on the training worker, not on the RPC
  // thread: SubmitJob queues, and the job ends FAILED with the dataset's path and the reason.
  struct DataCase {
    std::function<void(JobSpec&)> edit;
    std::string needle;
  };
  const std::vector<DataCase> data_cases = {
      {[](JobSpec& s) { s.set_dataset("sneaky"); }, "links outside"},
      {[](JobSpec& s) { s.set_dataset("fifo"); }, "pipe.png"},
      {[](JobSpec& s) { s.set_dataset("empty"); }, "empty"},
      {[](JobSpec& s) { s.set_batch_size(64); }, "batch_size"},  // > the 20 images
  };
  int n = 0;
  for (const DataCase& c : data_cases) {
    JobSpec spec = TinySpec("bad-data-" + std::to_string(n++), 2);
    c.edit(spec);
    Job job;
    grpc::Status s = Submit(*daemon_, spec, &job);
    ASSERT_TRUE(s.ok()) << spec.ShortDebugString() << " -> " << s.error_message();
    Watched w = Watch(*daemon_, job.id());
    ASSERT_TRUE(w.status.ok()) << w.status.error_message();
    const Job& last = w.events.back().job();
    EXPECT_EQ(last.state(), v1::JOB_STATE_FAILED) << spec.ShortDebugString();
    EXPECT_NE(last.message().find(c.needle), std::string::npos) << last.message();
    EXPECT_FALSE(Served(*daemon_, spec.model_name()));
  }
  auto stub = v1::Training::NewStub(daemon_->channel());
  grpc::ClientContext ctx;
  v1::JobRef ref;
  ref.set_id("job-999999");
  Job out;
  EXPECT_EQ(stub->GetJob(&ctx, ref, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  Watched w = Watch(*daemon_, "no-such-job");
  EXPECT_EQ(w.status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(TrainingTest, FineTuneFromAServedModel) {
  Job base;
  ASSERT_TRUE(Submit(*daemon_, TinySpec("ft-base", 2), &base).ok());
  ASSERT_EQ(Watch(*daemon_, base.id()).events.back().job().state(), v1::JOB_STATE_SUCCEEDED);
  JobSpec spec = TinySpec("ft-child", 2);
  spec.set_n_feat(0);  // taken from the base
  spec.set_base_model("ft-base");
  Job child;
  ASSERT_TRUE(Submit(*daemon_, spec, &child).ok());
  EXPECT_EQ(child.spec().n_feat(), 8u);
  Watched w = Watch(*daemon_, child.id());
  ASSERT_EQ(w.events.back().job().state(), v1::JOB_STATE_SUCCEEDED) << w.events.back().job().message();
  Result<ModelInfo> info = ReadModelInfo((daemon_->root() / "models" / "ft-child").string());
  ASSERT_TRUE(info.ok());
  EXPECT_NE(info->provenance.value("fine_tuned_from", "").find("ft-base"), std::string::npos) << info->provenance.dump();
}

TEST_F(TrainingTest, SpritectlSubmitWatchListAndErrors) {
  const std::string server = " --server " + daemon_->address();
  Output run = RunCtl("train submit" + server + " --name ctl-model --dataset mini --n-feat 8 --epochs 2 " +
                      "--batch-size 8 --checkpoint-every 1 --precision bf16 --watch --grids " +
                      (daemon_->root() / "grids").string());
  ASSERT_EQ(run.exit_code, 0) << run.text;
  EXPECT_NE(run.text.find("SUCCEEDED"), std::string::npos) << run.text;
  EXPECT_NE(run.text.find("n_feat 8, bf16"), std::string::npos) << run.text;
  Result<ModelInfo> trained = ReadModelInfo((daemon_->root() / "models" / "ctl-model").string());
  ASSERT_TRUE(trained.ok()) << trained.status().message();
  EXPECT_EQ(trained->provenance.value("precision", ""), "bf16 convolutions, float32 weights");
  Output fp16 = RunCtl("train submit" + server + " --name y --dataset mini --precision fp16");
  EXPECT_NE(fp16.exit_code, 0);
  EXPECT_NE(fp16.text.find("precision"), std::string::npos) << fp16.text;
  EXPECT_TRUE(fs::exists(daemon_->root() / "grids" / "grid-epoch-0002.png")) << run.text;
  Output list = RunCtl("train list" + server);
  ASSERT_EQ(list.exit_code, 0) << list.text;
  EXPECT_NE(list.text.find("ctl-model"), std::string::npos) << list.text;
  Output bad = RunCtl("train submit" + server + " --name x --dataset ../../etc");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.text.find("PERMISSION_DENIED"), std::string::npos) << bad.text;
  Output missing = RunCtl("train watch" + server + " job-424242");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.text.find("NOT_FOUND"), std::string::npos) << missing.text;
}

// Each restart test owns its daemon: it is stopped mid-job.
TEST(TrainingRestartTest, KilledMidJobResumesFromItsLastCheckpoint) {
  Daemon d;
  d.Start(kConfig);
  CopyMiniDataset(d.root() / "data", "mini", 4);
  Job job;
  ASSERT_TRUE(Submit(d, TinySpec("resumed", 60), &job).ok());
  ASSERT_TRUE(WaitFor(d, job.id(), [](const Job& j) { return j.progress().checkpoint_epoch() >= 4; }));
  d.Kill();  // kill -9: whatever was being written, the next start must cope
  ASSERT_TRUE(fs::exists(d.root() / "state" / "jobs" / job.id() / "train-state.pt"));
  d.Start(kConfig);
  Watched w = Watch(d, job.id());
  ASSERT_TRUE(w.status.ok()) << w.status.error_message();
  const Job& last = w.events.back().job();
  ASSERT_EQ(last.state(), v1::JOB_STATE_SUCCEEDED) << last.message() << "\n" << d.Log();
  EXPECT_EQ(last.resumes(), 1u);
  // A resume, not a restart from epoch 1 (which, seeded the same, would end with the same
  // losses): the worker found the training state and said so ("starting" otherwise).
  EXPECT_NE(d.Log().find("job " + job.id() + ": resuming training model resumed"), std::string::npos) << d.Log();
  EXPECT_EQ(d.Log().find("job " + job.id() + ": starting training"), std::string::npos) << d.Log();
  EXPECT_EQ(last.epoch_losses_size(), 60);
  EXPECT_TRUE(Served(d, "resumed"));
  EXPECT_EQ(d.Stop(), 0) << d.Log();
}

TEST(TrainingRestartTest, StoppedMidJobIsInterruptedWhenResumeIsOff) {
  Daemon d;
  d.Start(kConfig);
  CopyMiniDataset(d.root() / "data", "mini", 4);
  Job job;
  ASSERT_TRUE(Submit(d, TinySpec("halted", 100000), &job).ok());
  ASSERT_TRUE(WaitFor(d, job.id(), [](const Job& j) { return j.progress().step() > 0; }));
  EXPECT_EQ(d.Stop(), 0) << d.Log();  // SIGTERM with a job running: a clean exit
  d.Start(R"({"max_concurrent_jobs": 1, "resume_interrupted_jobs": false})");
  const Job after = Get(d, job.id());
  EXPECT_EQ(after.state(), v1::JOB_STATE_INTERRUPTED);
  EXPECT_NE(after.message().find("resume_interrupted_jobs"), std::string::npos) << after.message();
  EXPECT_FALSE(Served(d, "halted"));
  EXPECT_EQ(d.Stop(), 0) << d.Log();
}

// `spritediffd preview` shows real training images as the trainer sees them: one row per
// label in labels.txt order, each tile height x height upscaled, short rows padded.
TEST(OfflineCliTest, PreviewWritesOneRowPerLabel) {
  const fs::path root = fs::temp_directory_path() / ("spritediff_preview_" + std::to_string(::getpid()));
  CopyMiniDataset(root, "mini", 3);
  const std::string out = (root / "real.png").string();
  Output run = RunBin("spritediffd", "preview --data " + (root / "mini").string() +
                                         " --height 16 --per-label 4 --upscale 2 --out " + out);
  ASSERT_EQ(run.exit_code, 0) << run.text;
  Result<Image> grid = ReadPng(out);
  ASSERT_TRUE(grid.ok()) << grid.status().message();
  // 4 columns and 5 rows of 32-pixel tiles with 2-pixel gaps (MakeGrid pads the border too).
  Result<Image> expected = MakeGrid(std::vector<Image>(20, Image(32, 32, 3)), 4, 2);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(grid->width, expected->width);
  EXPECT_EQ(grid->height, expected->height);
  // Three real sprites per class and a fourth, empty tile: the last column of every row is black.
  for (int row = 0; row < 5; ++row) {
    const int y0 = 2 + row * 34, x_real = 2, x_blank = 2 + 3 * 34;
    int lit_real = 0, lit_blank = 0;
    for (int y = y0; y < y0 + 32; ++y) {
      for (int x = 0; x < 32; ++x) {
        lit_real += grid->at(x_real + x, y, 0) + grid->at(x_real + x, y, 1) + grid->at(x_real + x, y, 2) > 0;
        lit_blank += grid->at(x_blank + x, y, 0) + grid->at(x_blank + x, y, 1) + grid->at(x_blank + x, y, 2) > 0;
      }
    }
    EXPECT_GT(lit_real, 50) << "row " << row;
    EXPECT_EQ(lit_blank, 0) << "row " << row;
  }
  Output missing = RunBin("spritediffd", "preview --data " + (root / "absent").string() + " --out " + out);
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.text.find("--data"), std::string::npos) << missing.text;
  fs::remove_all(root);
}

// `spritediffd train --init-from` starts from a model's weights; a base of another shape is
// refused with both shapes named.
TEST(OfflineCliTest, TrainInitFromAModel) {
  const fs::path root = fs::temp_directory_path() / ("spritediff_initfrom_" + std::to_string(::getpid()));
  CopyMiniDataset(root, "mini", 2);
  const std::string common = "--threads 1 train --data " + (root / "mini").string() +
                             " --height 16 --epochs 1 --batch-size 5 --grid-per-label 0 --seed 3";
  Output base = RunBin("spritediffd", common + " --n-feat 8 --out " + (root / "base").string());
  ASSERT_EQ(base.exit_code, 0) << base.text;
  // With a negligible learning rate and no EMA, the result is the base's weights (and not
  // what the same seed gives without --init-from).
  const std::string frozen = " --lr 1e-9 --ema-decay 0";
  Output tuned = RunBin("spritediffd", common + frozen + " --n-feat 8 --out " + (root / "tuned").string() +
                                           " --init-from " + (root / "base").string());
  ASSERT_EQ(tuned.exit_code, 0) << tuned.text;
  Output fresh = RunBin("spritediffd", common + frozen + " --n-feat 8 --out " + (root / "fresh").string());
  ASSERT_EQ(fresh.exit_code, 0) << fresh.text;
  Result<LoadedModel> model = LoadModel((root / "tuned").string());
  Result<LoadedModel> base_model = LoadModel((root / "base").string());
  Result<LoadedModel> fresh_model = LoadModel((root / "fresh").string());
  ASSERT_TRUE(model.ok() && base_model.ok() && fresh_model.ok());
  EXPECT_EQ(model->info.provenance.value("fine_tuned_from", ""), (root / "base").string());
  auto base_params = base_model->net->named_parameters();
  auto fresh_params = fresh_model->net->named_parameters();
  bool differs_from_fresh = false;
  for (const auto& p : model->net->named_parameters()) {
    EXPECT_TRUE(torch::allclose(p.value(), base_params[p.key()], 1e-5, 1e-6)) << p.key();
    differs_from_fresh = differs_from_fresh || !torch::allclose(p.value(), fresh_params[p.key()], 1e-5, 1e-6);
  }
  EXPECT_TRUE(differs_from_fresh);
  Output wrong = RunBin("spritediffd", common + " --n-feat 16 --out " + (root / "wrong").string() + " --init-from " +
                                           (root / "base").string());
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_NE(wrong.text.find("n_feat 8"), std::string::npos) << wrong.text;
  fs::remove_all(root);
}

}  // namespace
}  // namespace spritediff::e2e
