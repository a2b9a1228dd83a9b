// The release version, written once in the top-level VERSION file and
// compiled in by the Makefile (build/gen/version.cc).
#pragma once

namespace slip {

/// "0.1.0": what `slipstream --version`, the status page and the Debian
/// package report.
const char* version();

}  // namespace slip
