//! The skyfuse home: where skyfuse keeps its own files when no config file names a place
//! (the embedded default's model and data, `eval`'s indexes), so the CLI behaves the same
//! from any folder.
//!
//! `SKYFUSE_HOME` if set, else `$XDG_DATA_HOME/skyfuse`, else `~/.local/share/skyfuse`.
//! Under it the layout of a checkout: `models/all-MiniLM-L6-v2`, `indexes/local`.
//! `SKYFUSE_MODEL_DIR` overrides the model folder alone (tests, CI caches, images).
//! `scripts/fetch-model.sh` resolves the same way; keep the two in step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const HOME_ENV: &str = "SKYFUSE_HOME";
pub const MODEL_DIR_ENV: &str = "SKYFUSE_MODEL_DIR";
/// The embedded default's model folder, relative to the home.
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

fn non_empty<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name)
        .map(String::as_str)
        .filter(|value| !value.is_empty())
}

/// Relative values are taken from the working directory, once, so later `cd`s do not move it.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// The skyfuse home for this environment.
pub fn skyfuse_home(env: &HashMap<String, String>) -> PathBuf {
    if let Some(home) = non_empty(env, HOME_ENV) {
        return absolute(PathBuf::from(home));
    }
    // The XDG spec says a relative XDG_DATA_HOME is invalid and to be ignored.
    if let Some(data_home) = non_empty(env, "XDG_DATA_HOME").filter(|path| path.starts_with('/')) {
        return Path::new(data_home).join("skyfuse");
    }
    if let Some(user_home) = non_empty(env, "HOME") {
        return Path::new(user_home).join(".local/share/skyfuse");
    }
    // No home at all (a bare container): the working directory, as before there was one.
    absolute(PathBuf::from("."))
}

/// Where the embedded default loads all-MiniLM-L6-v2 from.
pub fn default_model_dir(env: &HashMap<String, String>) -> PathBuf {
    match non_empty(env, MODEL_DIR_ENV) {
        Some(model_dir) => absolute(PathBuf::from(model_dir)),
        None => skyfuse_home(env).join(DEFAULT_MODEL_DIR),
    }
}

/// The shell command that puts the model in `model_dir`: said when it is missing.
pub fn fetch_model_command(model_dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model.sh");
    let script = if script.is_file() {
        shell_quote(&script.display().to_string())
    } else {
        // A binary moved away from its source tree: the script is in the repository.
        "scripts/fetch-model.sh".to_owned()
    };
    format!(
        "{MODEL_DIR_ENV}={} {script}",
        shell_quote(&model_dir.display().to_string())
    )
}

fn shell_quote(text: &str) -> String {
    let plain = text
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || "/._-+:@,".contains(character));
    if plain && !text.is_empty() {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn home_comes_from_skyfuse_home_then_xdg_then_the_user_home() {
        let all = [
            ("SKYFUSE_HOME", "/srv/skyfuse"),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/home/ana"),
        ];
        assert_eq!(skyfuse_home(&env(&all)), Path::new("/srv/skyfuse"));
        assert_eq!(skyfuse_home(&env(&all[1..])), Path::new("/xdg/skyfuse"));
        let relative_xdg = [("XDG_DATA_HOME", "xdg"), ("HOME", "/home/ana")];
        assert_eq!(
            skyfuse_home(&env(&relative_xdg)),
            Path::new("/home/ana/.local/share/skyfuse")
        );
        let empty = [("SKYFUSE_HOME", ""), ("HOME", "/home/ana")];
        assert_eq!(
            skyfuse_home(&env(&empty)),
            Path::new("/home/ana/.local/share/skyfuse")
        );
        assert!(skyfuse_home(&env(&[])).is_absolute());
    }

    #[test]
    fn the_model_dir_override_wins_over_the_home() {
        let home = [("SKYFUSE_HOME", "/srv/skyfuse")];
        assert_eq!(
            default_model_dir(&env(&home)),
            Path::new("/srv/skyfuse/models/all-MiniLM-L6-v2")
        );
        let both = [
            ("SKYFUSE_HOME", "/srv/skyfuse"),
            (MODEL_DIR_ENV, "/cache/m"),
        ];
        assert_eq!(default_model_dir(&env(&both)), Path::new("/cache/m"));
    }

    #[test]
    fn the_fetch_command_names_the_folder_quoted() {
        let command = fetch_model_command(Path::new("/home/ana/my models/m"));
        assert!(
            command.starts_with("SKYFUSE_MODEL_DIR='/home/ana/my models/m' "),
            "{command}"
        );
        assert!(command.ends_with("scripts/fetch-model.sh"), "{command}");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
