// Private to conf/: how sections, directives and values are written for
// people — in the loader's messages, `--help-config` and the README's
// reference (describe.cc).
#pragma once

#include <cstdint>
#include <string>

#include "conf/conf.h"

namespace slip::conf {

/// "server", "mount", ...
const char* kindName(SectionKind k);
/// Whether sections of this kind carry a name (`[mount NAME]`).
bool named(SectionKind k);
/// "server", "mount NAME": a section header as the user writes it.
std::string headerForm(SectionKind k);
/// "http and alist": the source types in a mask of sourceBit()s.
std::string sourcesText(unsigned mask);
/// 1048576 → "1M"; sizes that are no whole unit stay in bytes.
std::string formatSize(int64_t n);
/// "1..64", "at least 1M", "" (no bounds) for a number directive.
std::string boundsText(const Directive& d);

}  // namespace slip::conf
