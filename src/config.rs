//! `--config FILE` and `--print-config` for the daemons (`reflex manager`, `publisher`, `actor`),
//! and `--config FILE` for `reflex beacon`, whose file holds its `[[beacon]]` tables, `host` and
//! `spool` (read by the beacons crate) beside the same kind of settings (`addr`, `state`,
//! `manager-key`...), so a host's beacon is configured in one file like its actor.
//!
//! A config file is TOML whose keys are the subcommand's long flags (`port-base = 4600`, or
//! `port_base`): a string, a number or a boolean for a flag that takes one value or none, an
//! array for one that may repeat (`group = ["web", "eu"]`). Flags given on the command line win
//! over the file, key by key. The file is checked whole before anything starts: an unknown key
//! or a value the flag refuses is an error naming the file, the line and the key.
//!
//! It works on the command line itself, before clap parses it: the file's settings become flags
//! put in right after the subcommand's name, so a setting means exactly what its flag means,
//! checked by the same parser. `--print-config` prints the settings in force (file, flags and
//! defaults merged) as a config file that gives the same run.

use clap::{ArgAction, Command};
use std::ffi::OsString;
use toml_edit::{ImDocument, Item, Value};

/// The subcommands that take `--config`.
const DAEMONS: [&str; 4] = ["manager", "publisher", "actor", "beacon"];

/// Top-level keys of a beacon config file that the beacons crate reads itself.
const BEACON_FILE_KEYS: [&str; 3] = ["beacon", "host", "spool"];

/// Flags that are not settings (and any `--print-…`, which prints something and exits).
const NOT_SETTINGS: [&str; 5] = ["config", "help", "version", "check", "defaults"];

/// The settings a config file may hold for `reflex <sub>` besides what the beacons crate
/// reads: its long flags that are settings, the global ones (the log's) included.
pub fn file_settings(sub: &str) -> Vec<String> {
    let mut cli = <crate::cli::Cli as clap::CommandFactory>::command();
    cli.build();
    cli.find_subcommand(sub)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| is_setting(l) && !BEACON_FILE_KEYS.contains(l))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn is_setting(long: &str) -> bool {
    !NOT_SETTINGS.contains(&long) && !long.starts_with("print-")
}

/// The flags a daemon's config file and `--print-config` add (flattened into its arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Read settings from this TOML file (keys are the long flags; flags given here win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Print the settings in force (file, flags and defaults) as a config file, and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A config file that cannot be used.
#[derive(Debug)]
pub struct ConfigError {
    file: String,
    /// 1-based; 0 when the error is about the whole file.
    line: usize,
    what: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.what),
            n => write!(f, "{}:{n}: {}", self.file, self.what),
        }
    }
}

impl std::error::Error for ConfigError {}

/// `argv` with the settings of the daemon's `--config` file put in as flags, or as it is when
/// there is no daemon subcommand or no `--config`.
pub fn expand(argv: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>, ConfigError> {
    let mut cli = cli.clone();
    cli.build();
    let Some((at, sub)) = find_daemon(&argv, &cli) else {
        return Ok(argv);
    };
    let rest: Vec<String> = argv[at + 1..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(path) = config_path(&rest) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
        file: path.clone(),
        line: 0,
        what: format!("cannot read it: {e}"),
    })?;
    let flags = settings(&text, &path, sub, &rest)?;
    let mut out = argv[..=at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(argv[at + 1..].iter().cloned());
    Ok(out)
}

/// Where the daemon subcommand is in `argv`, and its command.
fn find_daemon<'a>(argv: &[OsString], cli: &'a Command) -> Option<(usize, &'a Command)> {
    let mut i = 1;
    while i < argv.len() {
        let a = argv[i].to_string_lossy();
        if let Some(long) = a.strip_prefix("--") {
            // A top-level option's value is not a subcommand.
            let takes_value = cli.get_arguments().any(|arg| {
                arg.get_long() == Some(long) && !matches!(arg.get_action(), ArgAction::SetTrue)
            });
            i += if takes_value && !long.contains('=') {
                2
            } else {
                1
            };
            continue;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        return DAEMONS
            .contains(&a.as_ref())
            .then(|| cli.find_subcommand(a.as_ref()).map(|s| (i, s)))
            .flatten();
    }
    None
}

/// The value of `--config` among a subcommand's arguments.
fn config_path(rest: &[String]) -> Option<String> {
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
        if a == "--config" {
            return it.next().cloned();
        }
    }
    None
}

/// The file's settings as flags, each checked by the subcommand's own parser; a setting whose
/// flag is on the command line (`given`) is left out.
fn settings(
    text: &str,
    file: &str,
    sub: &Command,
    given: &[String],
) -> Result<Vec<String>, ConfigError> {
    let err = |line: usize, what: String| ConfigError {
        file: file.to_string(),
        line,
        what,
    };
    let doc = ImDocument::parse(text.to_string()).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        err(line, format!("not valid TOML: {}", e.message()))
    })?;
    let known: Vec<&str> = sub
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| is_setting(l))
        .collect();
    let mut flags = Vec::new();
    for (key, item) in doc.as_table().iter() {
        if sub.get_name() == "beacon" && BEACON_FILE_KEYS.contains(&key) {
            continue;
        }
        let line = doc
            .as_table()
            .key(key)
            .and_then(|k| k.span())
            .map_or(0, |s| line_of(text, s.start));
        let long = key.replace('_', "-");
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| is_setting(&long))
        else {
            return Err(err(
                line,
                format!(
                    "unknown setting {key:?} for `reflex {}` (known: {})",
                    sub.get_name(),
                    known.join(", ")
                ),
            ));
        };
        let mine = setting_flags(&long, arg.get_action(), item)
            .map_err(|what| err(line, format!("{key}: {what}")))?;
        // Checked alone by the subcommand's parser, so a bad value names its line.
        let mut probe = vec![sub.get_name().to_string()];
        probe.extend(mine.iter().cloned());
        if let Err(e) = sub.clone().try_get_matches_from(&probe) {
            use clap::error::ErrorKind::*;
            if !matches!(
                e.kind(),
                MissingRequiredArgument | DisplayHelp | DisplayVersion
            ) {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default();
                let first = first.strip_prefix("error: ").unwrap_or(first);
                return Err(err(line, format!("{key}: {first}")));
            }
        }
        if !on_command_line(&long, arg.get_short(), given) {
            flags.extend(mine);
        }
    }
    Ok(flags)
}

/// The flags one setting stands for.
fn setting_flags(long: &str, action: &ArgAction, item: &Item) -> Result<Vec<String>, String> {
    let flag = format!("--{long}");
    let scalar = |v: &Value| -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.value().clone()),
            Value::Integer(i) => Ok(i.value().to_string()),
            Value::Float(f) => Ok(f.value().to_string()),
            Value::Boolean(b) => Ok(b.value().to_string()),
            _ => Err("must be a string, a number or a boolean".to_string()),
        }
    };
    let Some(value) = item.as_value() else {
        return Err("must be a value, not a table".to_string());
    };
    match (action, value) {
        (ArgAction::SetTrue, Value::Boolean(b)) => Ok(if *b.value() { vec![flag] } else { vec![] }),
        (ArgAction::SetTrue, _) => Err("must be true or false".to_string()),
        (ArgAction::Append, Value::Array(items)) => {
            let mut out = Vec::new();
            for v in items.iter() {
                out.push(flag.clone());
                out.push(scalar(v)?);
            }
            Ok(out)
        }
        (_, Value::Array(_)) => Err("takes one value, not an array".to_string()),
        (_, v) => Ok(vec![flag, scalar(v)?]),
    }
}

/// Whether `--long` (or its short form) is among the command-line arguments.
fn on_command_line(long: &str, short: Option<char>, given: &[String]) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    given.iter().take_while(|a| *a != "--").any(|a| {
        *a == flag
            || a.starts_with(&with_value)
            || short.is_some_and(|s| {
                a.len() >= 2 && a.starts_with('-') && !a.starts_with("--") && a[1..].starts_with(s)
            })
    })
}

/// The 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The settings in force for the daemon `matches` were parsed from, as a config file.
pub fn print(sub: &Command, matches: &clap::ArgMatches) -> String {
    let beacon = sub.get_name() == "beacon";
    let mut out = format!("# reflex {}: the settings in force\n", sub.get_name());
    for arg in sub.get_arguments() {
        let Some(long) = arg
            .get_long()
            .filter(|l| is_setting(l) && !(beacon && BEACON_FILE_KEYS.contains(l)))
        else {
            continue;
        };
        let id = arg.get_id().as_str();
        let key = long;
        match arg.get_action() {
            ArgAction::SetTrue => {
                let on = matches.get_flag(id);
                out.push_str(&format!("{key} = {on}\n"));
            }
            action => {
                let values: Vec<String> = matches
                    .get_raw(id)
                    .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                if matches!(action, ArgAction::Append) {
                    let items: Vec<String> = values.iter().map(|v| typed(v)).collect();
                    out.push_str(&format!("{key} = [{}]\n", items.join(", ")));
                } else if let Some(v) = values.first() {
                    out.push_str(&format!("{key} = {}\n", typed(v)));
                } else {
                    out.push_str(&format!("# {key} is not set\n"));
                }
            }
        }
    }
    if beacon {
        out.push_str(&beacons_part(matches));
    }
    out
}

/// `reflex beacon`'s beacons as its file gives them (`host`, `spool`, the `[[beacon]]` tables,
/// a `host` or `spool` flag winning), or the shipped defaults, or the one load beacon it runs
/// without a file.
fn beacons_part(matches: &clap::ArgMatches) -> String {
    let text = if let Some(path) = matches.get_one::<std::path::PathBuf>("config") {
        std::fs::read_to_string(path).unwrap_or_default()
    } else if matches.get_flag("defaults") {
        beacons::DEFAULT_CONFIG.to_string()
    } else {
        crate::beacon_cmd::FLAGS_ONLY.to_string()
    };
    let Ok(mut doc) = text.parse::<toml_edit::DocumentMut>() else {
        return String::new();
    };
    doc.retain(|k, _| BEACON_FILE_KEYS.contains(&k));
    for key in ["host", "spool"] {
        if let Some(v) = matches.get_raw(key).and_then(|mut v| v.next()) {
            doc.insert(key, toml_edit::value(v.to_string_lossy().into_owned()));
        }
    }
    format!("\n{}\n", doc.to_string().trim_matches('\n'))
}

/// A value as TOML: a number where it reads as one, else a quoted string.
fn typed(v: &str) -> String {
    if v.parse::<i64>().is_ok() || (v.parse::<f64>().is_ok_and(f64::is_finite) && v.contains('.')) {
        v.to_string()
    } else {
        Value::from(v).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn expanded(file: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reflex.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["reflex".into()];
        for a in args {
            argv.push(a.replace("FILE", &path.display().to_string()).into());
        }
        expand(argv, &crate::cli::Cli::command())
            .map(|v| v.iter().map(|a| a.to_string_lossy().into_owned()).collect())
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "FILE"))
    }

    #[test]
    fn settings_become_flags_and_the_command_line_wins() {
        let file = "name = \"web1\"\ngroup = [\"web\", \"eu\"]\nport_base = 4700\nno-replay = true\ninsecure = false\n";
        let args = expanded(
            file,
            &[
                "--log-level",
                "debug",
                "actor",
                "--config",
                "FILE",
                "--port-base",
                "4800",
            ],
        )
        .unwrap();
        let at = args.iter().position(|a| a == "actor").unwrap();
        assert_eq!(
            args[at + 1..at + 8],
            [
                "--name",
                "web1",
                "--group",
                "web",
                "--group",
                "eu",
                "--no-replay"
            ]
        );
        assert!(
            !args.contains(&"4700".to_string()),
            "the flag given wins: {args:?}"
        );
        let parsed = <crate::cli::Cli as clap::Parser>::try_parse_from(&args).expect("parses");
        let crate::cli::Cmd::Actor(a) = parsed.cmd else {
            panic!("not the actor")
        };
        assert_eq!(
            (a.name.as_deref(), a.stack.port_base, a.no_replay),
            (Some("web1"), 4800, true)
        );
        assert_eq!(a.groups, ["web", "eu"]);
        // Not a daemon, or no --config: untouched.
        assert_eq!(
            expanded("", &["send", "demo/x"]).unwrap(),
            ["reflex", "send", "demo/x"]
        );
    }

    #[test]
    fn a_beacon_file_holds_its_beacons_beside_the_beacon_settings() {
        let file = "host = \"web1\"\naddr = \"10.0.0.1\"\nmanager_key = \"/etc/reflex/manager.pub\"\n\n[[beacon]]\nkind = \"heartbeat\"\n";
        let args = expanded(file, &["beacon", "--config", "FILE", "--addr", "10.0.0.2"]).unwrap();
        assert_eq!(
            args[..4],
            [
                "reflex",
                "beacon",
                "--manager-key",
                "/etc/reflex/manager.pub"
            ],
            "host and [[beacon]] are the beacons crate's; the flag given wins"
        );
        assert_eq!((args.len(), args[4].as_str()), (8, "--config"), "{args:?}");
        assert_eq!(args[6..], ["--addr", "10.0.0.2"]);
        let outside = file_settings("beacon");
        for key in ["addr", "manager-key", "state", "port-base"] {
            assert!(outside.iter().any(|k| k == key), "{key}: {outside:?}");
        }
        for key in ["host", "spool", "beacon", "config", "check"] {
            assert!(!outside.iter().any(|k| k == key), "{key}: {outside:?}");
        }
        let outside: Vec<&str> = outside.iter().map(String::as_str).collect();
        let cfg = beacons::Config::parse_beside(file, "FILE", &outside).unwrap();
        assert_eq!((cfg.host.as_deref(), cfg.beacons.len()), (Some("web1"), 1));
        // Without the settings' names the beacons crate still refuses what it does not know.
        assert!(beacons::Config::parse(file, "FILE").is_err());
        let e = expanded("bogus = 1\n", &["beacon", "--config", "FILE"]).unwrap_err();
        assert!(
            e.starts_with("FILE:1: unknown setting \"bogus\" for `reflex beacon`"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_file_names_its_line_and_key() {
        let e = expanded(
            "name = \"x\"\n\nbogus = 1\n",
            &["actor", "--config", "FILE"],
        )
        .unwrap_err();
        assert!(
            e.starts_with("FILE:3: unknown setting \"bogus\" for `reflex actor`"),
            "{e}"
        );
        let e = expanded(
            "keep = 5\nport-base = \"abc\"\n",
            &["publisher", "--config=FILE"],
        )
        .unwrap_err();
        assert!(
            e.starts_with("FILE:2: port-base: invalid value 'abc'"),
            "{e}"
        );
        let e = expanded("insecure = \"yes\"\n", &["manager", "--config", "FILE"]).unwrap_err();
        assert_eq!(e, "FILE:1: insecure: must be true or false");
        let e = expanded(
            "group = \"web\"\nstate = [\"a\"]\n",
            &["actor", "--config", "FILE"],
        )
        .unwrap_err();
        assert_eq!(e, "FILE:2: state: takes one value, not an array");
        let e = expanded("name = \"x\n", &["actor", "--config", "FILE"]).unwrap_err();
        assert!(e.starts_with("FILE:1: not valid TOML"), "{e}");
        let e = expanded("[beacon]\n", &["actor", "--config", "FILE"]).unwrap_err();
        assert!(e.contains("unknown setting \"beacon\""), "{e}");
    }

    #[test]
    fn printed_settings_read_back_to_the_same_run() {
        let args = expanded(
            "name = \"db1\"\ngroup = [\"db\"]\n",
            &["actor", "--config", "FILE"],
        )
        .unwrap();
        let mut cli = crate::cli::Cli::command();
        cli.build();
        let m = cli.clone().get_matches_from(&args);
        let (name, sub) = m.subcommand().unwrap();
        let printed = print(cli.find_subcommand(name).unwrap(), sub);
        let again = expanded(&printed, &["actor", "--config", "FILE"]).unwrap();
        let m2 = cli.get_matches_from(&again);
        let (_, sub2) = m2.subcommand().unwrap();
        let raw = |m: &clap::ArgMatches, id: &str| -> Vec<String> {
            m.get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        for id in ["name", "groups", "state", "port_base", "converged_timeout"] {
            assert_eq!(raw(sub, id), raw(sub2, id), "{id}");
        }
    }

    #[test]
    fn a_beacon_prints_its_settings_and_its_beacons_as_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("beacon.toml");
        std::fs::write(
            &file,
            "host = \"web1\"\naddr = \"10.0.0.1\"\n\n[[beacon]]\nkind = \"heartbeat\"\ninterval = \"2s\"\n",
        )
        .unwrap();
        let printed_of = |file: &std::path::Path| -> String {
            let argv = ["reflex", "beacon", "--config", file.to_str().unwrap()];
            let mut cli = crate::cli::Cli::command();
            cli.build();
            let args = expand(argv.iter().map(OsString::from).collect(), &cli).unwrap();
            let m = cli.clone().get_matches_from(&args);
            let (name, sub) = m.subcommand().unwrap();
            print(cli.find_subcommand(name).unwrap(), sub)
        };
        let printed = printed_of(&file);
        assert!(printed.contains("addr = \"10.0.0.1\"\n"), "{printed}");
        assert!(printed.contains("host = \"web1\"\n"), "{printed}");
        assert!(!printed.contains("# host is not set"), "{printed}");
        // Read back: the same settings and the same beacons.
        let again = dir.path().join("printed.toml");
        std::fs::write(&again, &printed).unwrap();
        assert_eq!(printed_of(&again), printed);
        let outside = file_settings("beacon");
        let outside: Vec<&str> = outside.iter().map(String::as_str).collect();
        let cfg = beacons::Config::load_beside(&again, &outside).unwrap();
        assert_eq!(cfg.host.as_deref(), Some("web1"));
        assert_eq!(cfg.beacons.len(), 1);
        assert_eq!(cfg.beacons[0].interval, std::time::Duration::from_secs(2));
    }
}
