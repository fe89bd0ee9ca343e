// Checks on the self-contained HTML pages of report.h and compare.h (test_analysis,
// test_compare): every chart drew something, and nothing is fetched at view time.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
// GCC 12's std::regex trips -Wmaybe-uninitialized inside std::function when built with the
// sanitizers: a false positive inside libstdc++, not a read of ours (off for the rest of the
// test file, where the templates are instantiated).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <regex>

namespace moe::test {

// Every <svg class="chart" ... data-marks="N"> with N > 0, and as many as data-charts says.
inline void expect_all_charts_drawn(const std::string& html, int at_least) {
  const std::regex chart("<svg class=\"chart\" data-chart=\"([^\"]+)\" data-marks=\"(\\d+)\"");
  int charts = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), chart);
       it != std::sregex_iterator(); ++it) {
    ++charts;
    EXPECT_GT(std::stoi((*it)[2]), 0) << "chart " << (*it)[1] << " drew nothing";
  }
  EXPECT_GE(charts, at_least);
  EXPECT_NE(html.find(fmt::format("data-charts=\"{}\"", charts)), std::string::npos);
  // Self-contained: nothing fetched at view time, no script.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_EQ(html.find("nan"), std::string::npos);
}

}  // namespace moe::test
