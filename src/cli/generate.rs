//! `--generate`: the man page and shell completions, made from the same
//! definition as `--help`.

use super::Args;
use clap::CommandFactory;

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum Generated {
    /// The man page, in roff (`man ./echo-server.1`).
    Man,
    /// A bash completion script.
    Bash,
    /// A zsh completion script.
    Zsh,
    /// A fish completion script.
    Fish,
}

impl std::fmt::Display for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Generated::Man => "man page",
            Generated::Bash => "bash completion",
            Generated::Zsh => "zsh completion",
            Generated::Fish => "fish completion",
        })
    }
}

/// Writes the man page or a completion script for the command line.
///
/// # Errors
///
/// Writing to `out` failed.
pub fn generate(what: Generated, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut command = Args::command();
    let shell = match what {
        Generated::Man => return clap_mangen::Man::new(command).render(out),
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: clap_complete panics when its writer fails (a
    // full disk, a closed pipe), and a write error must be an exit status.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "echo-server", &mut script);
    out.write_all(&script)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The man page documents every option, and each completion script
    /// knows each of them.
    #[test]
    fn man_page_and_completions_cover_every_option() {
        let longs: Vec<String> = Args::command()
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        assert!(longs.len() > 25, "{longs:?}");
        for what in [
            Generated::Man,
            Generated::Bash,
            Generated::Zsh,
            Generated::Fish,
        ] {
            let mut out = Vec::new();
            generate(what, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for long in &longs {
                // roff escapes every dash of an option in the man page.
                let found = text.contains(&format!("--{long}"))
                    || text.contains(&format!("\\-\\-{}", long.replace('-', "\\-")))
                    || (what == Generated::Fish && text.contains(&format!("-l {long}")));
                assert!(found, "{what} output lacks --{long}");
            }
        }
    }
}
