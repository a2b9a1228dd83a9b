// The status page (/-/status): one self-contained HTML file, src/status_page.html,
// compiled into the binary by the Makefile (build/gen/status_page.cc). It
// draws itself from the admin API (/-/api/v1/stats, transfers, prefetch).
#pragma once

#include <string_view>

namespace slip {

/// The whole page: HTML with inline CSS and JavaScript, nothing external.
std::string_view statusPage();

}  // namespace slip
