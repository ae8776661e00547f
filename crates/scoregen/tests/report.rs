//! The run report of a tiny run: the HTML is well formed, every text is
//! escaped, and every `src`/`href` names a file that exists beside it.

mod ci;

use scoregen::app::commands::report::write_report;
use scoregen::app::config::RunConfig;
use scoregen::train::TrainOptions;
use std::path::Path;

/// Elements that have no closing tag.
const VOID: [&str; 6] = ["meta", "img", "br", "link", "hr", "input"];

/// A strict reading of the HTML we write: every element closed in order,
/// attributes quoted, `&` only in the five entities `escape` writes, `<` and
/// `>` only as tag delimiters. Returns the `src` and `href` values.
fn check_well_formed(html: &str) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut links = Vec::new();
    let mut rest = html;
    let check_text = |t: &str| -> Result<(), String> {
        if t.contains('>') {
            return Err(format!("unescaped `>` in text: {t:?}"));
        }
        let mut parts = t.split('&');
        parts.next();
        for p in parts {
            if !["amp;", "lt;", "gt;", "quot;", "#39;"].iter().any(|e| p.starts_with(e)) {
                return Err(format!("bare `&` in text: &{}", p.chars().take(12).collect::<String>()));
            }
        }
        Ok(())
    };
    while let Some(i) = rest.find('<') {
        check_text(&rest[..i])?;
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("<!--") {
            rest = &r[r.find("-->").ok_or("unclosed comment")? + 3..];
            continue;
        }
        if rest.starts_with("<!DOCTYPE") {
            rest = &rest[rest.find('>').ok_or("unclosed doctype")? + 1..];
            continue;
        }
        if let Some(r) = rest.strip_prefix("</") {
            let end = r.find('>').ok_or("unclosed end tag")?;
            let name = &r[..end];
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("`</{name}>` closes {other:?}")),
            }
            rest = &r[end + 1..];
            continue;
        }
        // a start tag: name, then attributes name="value", then `>`
        let r = &rest[1..];
        let name_end = r.find(|c: char| c.is_whitespace() || c == '>').ok_or("unclosed tag")?;
        let name = r[..name_end].to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("bad tag name {name:?}"));
        }
        let mut a = r[name_end..].trim_start();
        while !a.starts_with('>') {
            let eq = a.find(|c: char| c == '=' || c == '>' || c.is_whitespace()).ok_or("unclosed tag")?;
            let attr = &a[..eq];
            if !a[eq..].starts_with("=\"") {
                return Err(format!("attribute `{attr}` of <{name}> is not quoted"));
            }
            let v = &a[eq + 2..];
            let close = v.find('"').ok_or("unclosed attribute value")?;
            check_text(&v[..close])?;
            if attr == "src" || attr == "href" {
                links.push(v[..close].to_string());
            }
            a = v[close + 1..].trim_start();
        }
        rest = &a[1..];
        if name == "style" || name == "script" {
            let end = format!("</{name}>");
            rest = &rest[rest.find(&end).ok_or(format!("unclosed <{name}>"))? + end.len()..];
        } else if !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    check_text(rest)?;
    if !stack.is_empty() {
        return Err(format!("unclosed elements {stack:?}"));
    }
    Ok(links)
}

/// Trains `text` for its few steps in `dir` and writes its report.
fn tiny_report(dir: &Path, text: &str) -> (scoregen::app::commands::report::Report, String, Vec<String>) {
    scoregen::init();
    let cfg = RunConfig::parse(text, "tiny.toml", &[]).unwrap();
    scoregen::app::commands::train::train(&cfg, dir, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let report = write_report(dir, true, &candle_core::Device::Cpu).unwrap();
    let html = std::fs::read_to_string(&report.html).unwrap();
    let links = check_well_formed(&html).unwrap_or_else(|e| panic!("report.html is not well formed: {e}"));
    for l in &links {
        if let Some(anchor) = l.strip_prefix('#') {
            assert!(html.contains(&format!("id=\"{anchor}\"")), "dangling anchor {l}");
        } else {
            assert!(!l.contains("://") && !l.starts_with('/'), "{l} is not a relative link");
            assert!(dir.join(l).is_file(), "{l} does not exist");
        }
    }
    (report, html, links)
}

/// The checker itself fails on what it should.
#[test]
fn checker_rejects_malformed_html() {
    assert!(check_well_formed("<p><b>x</p></b>").is_err());
    assert!(check_well_formed("<p>a < b</p>").is_err());
    assert!(check_well_formed("<p>a & b</p>").is_err());
    assert!(check_well_formed("<img src=x.png>").is_err());
    assert!(check_well_formed("<div><p>x</p>").is_err());
    assert_eq!(check_well_formed("<p>a &lt; b<img src=\"x.png\"></p>").unwrap(), vec!["x.png"]);
}

/// An SDE run: every figure is drawn, the name is escaped, links resolve.
#[test]
fn report_of_an_sde_run_links_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name = \"a<b & c\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 32\n[training]\nsteps = 40\n\
                batch_size = 64\nlog_every = 10\ncheckpoint_every = 40\n[sampling]\nsteps = 50\n";
    let (report, html, links) = tiny_report(dir.path(), text);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(html.contains("a&lt;b &amp; c") && !html.contains("a<b"));
    for f in ["loss.png", "samples.png", "score_field.png", "density.png", "reverse_process.gif", "forward_reverse.png"]
    {
        let link = format!("report/{f}");
        assert!(links.contains(&link), "{link} not on the page");
        let bytes = std::fs::read(dir.path().join(&link)).unwrap();
        let magic: &[u8] = if f.ends_with(".gif") { b"GIF89a" } else { b"\x89PNG" };
        assert!(bytes.starts_with(magic) && bytes.len() > 5_000, "{f}: {} bytes", bytes.len());
    }
    // the resolved config is on the page
    assert!(html.contains("[training]") && html.contains("steps = 40"));
    renders_in_chromium(&report.html);
}

/// Renders the page with headless Chromium when it is installed (CI's
/// `.ci/run` and `scripts/screenshot-report.sh` install it) and checks that the
/// figures were drawn: the viridis purple of the heat maps only appears if the
/// browser loaded the PNGs. Without chromium it skips, except under CI, where it fails.
fn renders_in_chromium(page: &Path) {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        ci::missing_dependency("chromium is not installed, no render check (scripts/setup.sh installs it)");
        return;
    };
    let shot = page.with_file_name("screenshot.png");
    let status = std::process::Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success() && shot.is_file(), "{browser} did not render {}", page.display());
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.width(), 1200);
    // viridis' bottom colour (68, 1, 84), the background of every heat map, within rounding
    let purple = img.pixels().filter(|p| p[0].abs_diff(68) < 8 && p[1] < 12 && p[2].abs_diff(84) < 8).count();
    assert!(purple > 10_000, "only {purple} heat-map pixels: the figures did not load");
}

/// A noise-free energy run on data without an exact density: density from
/// the energy, metrics against the training points, Langevin GIF, and no
/// forward–reverse figure (there is no SDE), with nothing left unexplained.
#[test]
fn report_of_an_energy_run_draws_its_energy() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name = \"energy\"\n[data]\nsource = \"moons\"\nn_train = 2000\n[model]\nkind = \"energy-mlp\"\noutput = \"score\"\nwidth = 32\n[objective]\nkind = \"sliced-vr\"\n\
                [training]\nsteps = 20\nbatch_size = 64\nlog_every = 10\ncheckpoint_every = 20\n\
                [sampling]\nsampler = \"langevin\"\nsteps = 40\nstep_size = 0.01\n";
    let (report, html, links) = tiny_report(dir.path(), text);
    assert!(links.contains(&"report/density.png".to_string()));
    assert!(links.contains(&"report/reverse_process.gif".to_string()));
    assert!(!links.contains(&"report/forward_reverse.png".to_string()));
    assert!(html.contains("−f_θ"), "the density should come from the energy");
    assert!(html.contains("floor (data vs data)") && html.contains("energy distance"));
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
}
