// One way for a command-line program to give up: "<program>: error: <message>" on stderr and
// exit code 1 (through CLI11, so destructors run). Used by spritectl and spritediffd.
#pragma once

#include <CLI/CLI.hpp>

#include <iostream>
#include <string>

namespace spritediff {

[[noreturn]] inline void FailCli(const std::string& program, const std::string& message) {
  std::cerr << program << ": error: " << message << "\n";
  throw CLI::RuntimeError(1);
}

}  // namespace spritediff
