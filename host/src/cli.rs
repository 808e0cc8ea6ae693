//! What every Vouch binary's command line offers besides its own verbs:
//! shell completions and a manual page, both generated from its clap
//! definition, so they never drift from `--help`.
//!
//! ```no_run
//! # #[derive(clap::Parser)] struct Cli { #[command(subcommand)] c: Option<Extra> }
//! # #[derive(clap::Subcommand)] enum Extra { #[command(flatten)] Docs(vouch_host::cli::Docs) }
//! use clap::CommandFactory;
//! vouch_host::cli::Docs::Man.print(Cli::command()).expect("stdout");
//! ```

use std::io::Write;

/// The two documentation verbs; flatten it into a binary's subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Docs {
    /// Print the shell completion script (bash: save it as
    /// /usr/share/bash-completion/completions/NAME; zsh, fish, elvish,
    /// powershell likewise).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `NAME man | man -l -`.
    Man,
}

impl Docs {
    /// Writes what was asked for `cmd` (the binary's whole command) to
    /// standard output.
    /// A reader that stops early (`| head`) is not an error.
    pub fn print(&self, cmd: clap::Command) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match self.write(cmd, &mut out).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }

    /// Writes what was asked for `cmd` to `out`.
    pub fn write(&self, mut cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Docs::Completions { shell } => {
                // clap_complete panics when its writer fails (a closed pipe,
                // a full disk): generate in memory, write with errors.
                let name = cmd.get_name().to_owned();
                let mut script = Vec::new();
                clap_complete::generate(*shell, &mut cmd, name, &mut script);
                out.write_all(&script)
            }
            Docs::Man => clap_mangen::Man::new(cmd).render(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("vouch-demo")
            .about("A demo")
            .subcommand(clap::Command::new("serve").about("Serve it"))
    }

    #[test]
    fn completions_and_the_manual_come_from_the_command() {
        let mut out = Vec::new();
        Docs::Completions {
            shell: clap_complete::Shell::Bash,
        }
        .write(command(), &mut out)
        .unwrap();
        let bash = String::from_utf8(out).unwrap();
        assert!(
            bash.contains("default vouch-demo") && bash.contains("serve"),
            "{bash}"
        );
        let mut out = Vec::new();
        Docs::Man.write(command(), &mut out).unwrap();
        let man = String::from_utf8(out).unwrap();
        assert!(
            man.contains(".TH vouch-demo 1") && man.contains("Serve it"),
            "{man}"
        );
    }
}
