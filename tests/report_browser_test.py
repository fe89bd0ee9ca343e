#!/usr/bin/env python3
"""Opens a real report.html and a `moe compare --out` page in headless Chromium and checks
that they render.

Trains a tiny run on the bundled corpus (byte tokenizer, a few steps, as tests/cli_smoke.sh),
adds the untrained-router baseline with `moe analyze --untrained`, rewrites the report with
`moe report`, trains a second run (no aux loss, aux-loss-free selection bias instead) and
compares the two with `moe compare --out compare.html`. Then loads each page through
chromedriver (Selenium) with the network off and checks: no SEVERE entry in the browser
console, every <svg class="chart"> has a size on the page and as many drawn marks (elements of
class "mark" with a non-empty box) as its data-marks says, and at least one; the report's load
heatmap has its colour legend and the max/mean chart its ceiling line. Saves a full-page
screenshot of each (the compare page's next to the report's, suffixed _compare).

Usage: report_browser_test.py path/to/moe screenshot.png
Exit status 77 (ctest: skipped) when Chromium, chromedriver or Selenium is missing; install
them with scripts/setup.sh (Debian packages chromium chromium-driver python3-selenium).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77


def find(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def check_page(driver, path, screenshot, at_least, want, failures):
    """Loads one page, saves its screenshot, appends what is wrong; returns its chart count."""
    name = os.path.basename(path)
    driver.set_window_size(1400, 1000)
    driver.get("file://" + os.path.abspath(path))
    charts = driver.execute_script("""
        return Array.from(document.querySelectorAll('svg.chart')).map(s => {
          const r = s.getBoundingClientRect();
          const marks = Array.from(s.querySelectorAll('.mark'));
          const drawn = marks.filter(m => {
            const b = m.getBBox(); return b.width > 0 || b.height > 0; }).length;
          return {name: s.dataset.chart, declared: Number(s.dataset.marks),
                  marks: marks.length, drawn: drawn, width: r.width, height: r.height};
        });""")
    declared_charts = driver.execute_script("return Number(document.body.dataset.charts);")
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, min(max(height, 1000), 16000))
    driver.save_screenshot(screenshot)
    logs = driver.get_log("browser")
    for entry in logs:
        if entry.get("level") == "SEVERE":
            failures.append("%s: console error: %s" % (name, entry.get("message")))
    if len(charts) < at_least:
        failures.append("%s: only %d charts on the page" % (name, len(charts)))
    if declared_charts != len(charts):
        failures.append("%s: body data-charts=%s but %d charts" %
                        (name, declared_charts, len(charts)))
    for c in charts:
        if c["width"] <= 0 or c["height"] <= 0:
            failures.append("%s: chart %s has no size on the page" % (name, c["name"]))
        if c["declared"] <= 0 or c["marks"] != c["declared"]:
            failures.append("%s: chart %s: data-marks=%s but %d marks" %
                            (name, c["name"], c["declared"], c["marks"]))
        if c["drawn"] == 0:
            failures.append("%s: chart %s: no mark has a drawn box" % (name, c["name"]))
    names = {c["name"] for c in charts}
    for w in want:
        if w not in names:
            failures.append("%s: chart %s is missing" % (name, w))
    return len(charts)


def main():
    moe, screenshot = sys.argv[1], sys.argv[2]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("report_browser_test: python3-selenium is not installed: skipped")
        return SKIP
    chromium = find("chromium", "chromium-browser", "google-chrome")
    driver_path = find("chromedriver")
    if not chromium or not driver_path:
        print("report_browser_test: chromium or chromedriver is not installed: skipped")
        return SKIP

    with tempfile.TemporaryDirectory(prefix="moe_report_browser_") as tmp:
        config = {
            "model_type": "mixtral", "vocab_size": 258, "hidden_size": 32,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "training": {"max_steps": 8, "batch_size": 2, "seq_len": 32, "eval_every": 4,
                         "eval_batches": 4, "checkpoint_every": 0, "tokenizer": "byte",
                         "data_dir": os.path.join(tmp, "data")},
        }
        with open(os.path.join(tmp, "tiny.json"), "w") as f:
            json.dump(config, f)
        run = os.path.join(tmp, "run")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        subprocess.run([moe, "train", "--config", os.path.join(tmp, "tiny.json"), "--out", run,
                        "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([moe, "analyze", run, "--untrained", "--windows", "16"], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([moe, "report", run], check=True, env=env, stdout=subprocess.DEVNULL)
        report = os.path.join(run, "report.html")
        config["router_aux_loss_coef"] = 0.0
        config["use_selection_bias"] = True
        with open(os.path.join(tmp, "freebias.json"), "w") as f:
            json.dump(config, f)
        run2 = os.path.join(tmp, "freebias")
        subprocess.run([moe, "train", "--config", os.path.join(tmp, "freebias.json"), "--out",
                        run2, "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
        compare = os.path.join(tmp, "compare.html")
        subprocess.run([moe, "compare", run, run2, "--out", compare], check=True, env=env,
                       stdout=subprocess.DEVNULL)

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    # Network-quiet: no background fetches, updates, sync or first-run pages.
                    "--disable-background-networking", "--no-first-run",
                    "--disable-component-update", "--disable-sync", "--disable-default-apps",
                    "--metrics-recording-only", "--disable-extensions",
                    "--disable-features=MediaRouter,OptimizationHints,Translate",
                    "--window-size=1400,1000"]:
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
        failures = []
        try:
            pages = [
                (report, screenshot, 10,
                 ["loss_task", "loss_aux", "loss_z", "load_0", "dropped", "entropy",
                  "load_max_mean", "mi_domain", "domain_0", "class_0", "coact_0"]),
                (compare, os.path.splitext(screenshot)[0] + "_compare.png", 6,
                 ["train_loss", "val_loss", "aux_loss", "balance", "load_cv", "dropped"]),
            ]
            total = 0
            for path, shot, least, want in pages:
                total += check_page(driver, path, shot, least, want, failures)
            # The report's load legend and max/mean ceiling.
            driver.get("file://" + os.path.abspath(report))
            legend = driver.execute_script(
                "return document.querySelectorAll("
                "'svg[data-chart=\"load_0\"] .legend rect').length;")
            ceiling = driver.execute_script(
                "return document.querySelectorAll("
                "'svg[data-chart=\"load_max_mean\"] line.ref').length;")
            if legend < 2:
                failures.append("report: the load heatmap has no colour legend")
            if ceiling != 1:
                failures.append("report: the max/mean chart has %d ceiling lines" % ceiling)
        finally:
            driver.quit()

        if failures:
            print("report_browser_test: FAILED\n  " + "\n  ".join(failures))
            return 1
        print("report_browser_test: ok: %d charts drawn on 2 pages, no severe console entry, "
              "screenshots %s and its _compare sibling" % (total, screenshot))
        return 0


if __name__ == "__main__":
    sys.exit(main())
