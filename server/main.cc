// spritediffd: the spritediff daemon (serve) and its offline tools (train, sample, bench).
#include <CLI/CLI.hpp>

#include <iostream>

#include "commands/commands.h"
#include "common/precision.h"
#include "commands/eval_command.h"
#ifndef SPRITEDIFF_OFFLINE_ONLY  // CMake option: the offline subcommands alone, no daemon
#include "server/serve_command.h"
#endif

int main(int argc, char** argv) {
  CLI::App app{"spritediffd: trains and serves small diffusion models for pixel-art sprites"};
  app.require_subcommand(1);
  spritediff::CommonOptions common;
  app.add_option("--config", common.config_path,
                 "JSON config file; else $SPRITEDIFF_CONFIG, else /etc/spritediff/config.json if present, else the "
                 "built-in defaults (docs/configuration.md)")
      ->check([](const std::string& path) { return path.empty() ? std::string("--config must name a file") : ""; });
  app.add_option("--threads", common.threads, "intra-op CPU threads; 0 = all cores (overrides config)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--device", common.device, "auto | cpu | cuda | cuda:N (overrides config)");
  app.add_option("--precision", common.precision,
                 "inference precision: fp32 | bf16 | auto (bf16 on a CPU with native bf16; overrides config)")
      ->check(CLI::IsMember(spritediff::PrecisionNames()));
  app.fallthrough();

  spritediff::AddTrainCommand(app, common);
  spritediff::AddSampleCommand(app, common);
  spritediff::AddBenchCommand(app, common);
#ifndef SPRITEDIFF_OFFLINE_ONLY
  spritediff::AddServeCommand(app, common);
#endif
  spritediff::AddImportCommand(app, common);
  spritediff::AddPreviewCommand(app, common);
  spritediff::AddEvalCommand(app, common);
  spritediff::AddConfigCommand(app, common);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {  // a last resort: a message and exit 1, never an abort
    std::cerr << "spritediffd: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
