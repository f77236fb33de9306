// `spritediffd config`: prints the config a command would use (and which file it came from),
// `--defaults` the commented default config, `--markdown` the docs page (docs/configuration.md).
// All three come from the key table in common/config_keys.cc.
#include <iostream>
#include <memory>

#include "commands/commands.h"

namespace spritediff {

void AddConfigCommand(CLI::App& app, const CommonOptions& common) {
  struct Args {
    bool defaults = false;
    bool markdown = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "config", "print the config a command would use and where it came from (--config, $SPRITEDIFF_CONFIG, "
                "/etc/spritediff/config.json or the built-in defaults)");
  auto* defaults = cmd->add_flag("--defaults", a->defaults, "print every key at its built-in default, commented");
  cmd->add_flag("--markdown", a->markdown, "print the configuration docs page (docs/configuration.md)")
      ->excludes(defaults);
  cmd->callback([a, &common] {
    if (a->defaults) {
      std::cout << DefaultConfigText();
    } else if (a->markdown) {
      std::cout << ConfigMarkdown();
    } else {
      AppConfig config = ResolveConfig(common);
      Status valid = config.Validate();  // flag overrides are checked as the file was
      if (!valid.ok()) Fail(valid.message());
      std::cout << CommentedConfigText(config, "spritediffd configuration in effect, from " + config.loaded_from +
                                                   " with the flags given.");
    }
    std::cout.flush();
    if (!std::cout) Fail("cannot write to standard output");
  });
}

}  // namespace spritediff
