#include "commands/commands.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <memory>
#include <sstream>

#include "common/file_util.h"
#include "core/checkpoint.h"
#include "core/torch_import.h"

namespace spritediff {

namespace fs = std::filesystem;

void AddImportCommand(CLI::App& app, const CommonOptions&) {
  struct Args {
    std::string from;
    std::string labels;
    int n_feat = 64;
    int height = 16;
    std::string out;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("import", "turn a course / minDiffusion state_dict (.pth) into a spritediff model");
  cmd->add_option("--from", a->from, "the .pth file (torch.save of model.state_dict())")->required();
  cmd->add_option("--labels", a->labels, "label names in context order, comma separated (n_cfeat of them)")->required();
  cmd->add_option("--n-feat", a->n_feat, "n_feat the checkpoint was trained with")->capture_default_str();
  cmd->add_option("--height", a->height, "image size the checkpoint was trained with")->capture_default_str();
  cmd->add_option("--out", a->out, "model directory to write, e.g. models/NAME")->required();
  cmd->callback([a] {
    ImportOptions options;
    options.n_feat = a->n_feat;
    options.height = a->height;
    options.name = fs::path(a->out).lexically_normal().filename().string();
    std::stringstream ss(a->labels);
    std::string label;
    while (std::getline(ss, label, ',')) {
      if (label.empty()) Fail("--labels: empty label name in '" + a->labels + "'");
      options.labels.push_back(label);
    }
    Result<StateDict> state = ReadTorchStateDict(a->from);
    if (!state.ok()) Fail(state.status().message());
    Result<ImportResult> imported = ImportStateDict(*state, options);
    if (!imported.ok()) Fail(a->from + ": " + imported.status().message());
    for (const std::string& note : imported->notes) spdlog::info("note: {}", note);
    ModelInfo info = imported->model.info;
    info.provenance = {{"imported_from", a->from}, {"tensors", state->size()}, {"import_notes", imported->notes}};
    Status s = SaveModel(a->out, info, imported->model.net);
    if (!s.ok()) Fail(s.message());
    std::ostringstream card;
    card << "# " << info.name << "\n\nImported with `spritediffd import --from " << a->from << " --labels " << a->labels
         << " --n-feat " << a->n_feat << " --height " << a->height << " --out " << a->out << "`.\n\n"
         << "ContextUnet, n_feat " << a->n_feat << ", " << a->height << "x" << a->height << ", labels in context order: "
         << a->labels << ". " << state->size() << " tensors imported.\n";
    for (const std::string& note : imported->notes) card << "\n- " << note << ".\n";
    s = WriteFileAtomic((fs::path(a->out) / "README.md").string(), card.str());
    if (!s.ok()) Fail(s.message());
    spdlog::info("imported {} tensors from {} into {}", state->size(), a->from, a->out);
  });
}

}  // namespace spritediff
