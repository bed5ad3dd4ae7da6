//! `flashgate check-config` over the fixtures in `tests/fixtures/config/`,
//! one file per case. Each fixture is a config file whose leading comments
//! say how to run it and what must come out:
//!
//! - `# args: --drain-rate -5`: flags after `--config FILE`;
//! - `# env: FLASHGATE_X=1 FLASHGATE_Y=0`: environment variables;
//! - `# expect: TEXT`: the run exits 2 and stderr contains TEXT;
//! - `# stdout: TEXT` / `# not: TEXT`: the run succeeds and the printed
//!   config contains (does not contain) TEXT.

mod support;

use std::path::Path;

use support::{flashgate, repo};

#[derive(Default)]
struct Case {
    args: Vec<String>,
    env: Vec<(String, String)>,
    expect: Vec<String>,
    stdout: Vec<String>,
    not: Vec<String>,
}

fn read_case(text: &str) -> Case {
    let mut case = Case::default();
    for line in text.lines().map_while(|l| l.strip_prefix("# ")) {
        let (what, rest) = line.split_once(": ").expect("`# what: text`");
        let words = || rest.split_whitespace().map(String::from);
        match what {
            "args" => case.args.extend(words()),
            "env" => case.env.extend(words().map(|w| {
                let (k, v) = w.split_once('=').expect("NAME=value");
                (k.to_string(), v.to_string())
            })),
            "expect" => case.expect.push(rest.to_string()),
            "stdout" => case.stdout.push(rest.to_string()),
            "not" => case.not.push(rest.to_string()),
            other => panic!("unknown fixture line `{other}`"),
        }
    }
    case
}

fn run(dir: &Path, file: &str, case: &Case) -> std::process::Output {
    flashgate()
        .current_dir(dir)
        .args(["check-config", "--config", file])
        .args(&case.args)
        .envs(case.env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the flashgate binary runs")
}

#[test]
fn every_config_fixture_gives_its_expected_answer() {
    let dir = repo().join("tests/fixtures/config");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the fixture folder")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures missing: {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let case = read_case(&std::fs::read_to_string(dir.join(name)).unwrap());
        assert!(
            case.expect.len() + case.stdout.len() + case.not.len() > 0,
            "{name} checks nothing"
        );
        let out = run(&dir, name, &case);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let mut fail = |what: String| failures.push(format!("{name}: {what}"));
        match (case.expect.is_empty(), out.status.code()) {
            (true, Some(0)) | (false, Some(2)) => {}
            (_, code) => fail(format!("exit code {code:?}\n{stdout}{stderr}")),
        }
        for text in &case.expect {
            if !stderr.contains(text.as_str()) {
                fail(format!("wanted `{text}` on stderr:\n{stderr}"));
            }
        }
        for text in &case.stdout {
            if !stdout.contains(text.as_str()) {
                fail(format!("wanted `{text}` on stdout:\n{stdout}"));
            }
        }
        for text in case.not.iter().filter(|t| stdout.contains(t.as_str())) {
            fail(format!("`{text}` on stdout:\n{stdout}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
