//! The reference device's application: telemetry out, commands in, and the
//! application scope bits that decide which commands a gateway may give.
//!
//! The protocol enforces the two protocol bits (SPEC.md §5.5): without
//! `TELEMETRY` the device cannot send, without `COMMAND` the gateway's data is
//! rejected by the session. Bits 8–31 belong to the application; this one
//! uses two of them, granted in the backend policy as `app8` and `app9`:
//!
//! | command | meaning | needs |
//! |---|---|---|
//! | `led=on`, `led=off` | switch the (simulated) LED | [`ACTUATE`] (bit 8) |
//! | `interval=SECS` | change the telemetry interval | [`CONFIGURE`] (bit 9) |
//! | `reboot` | close the session and restart the device (it then resumes) | [`CONFIGURE`] (bit 9) |
//!
//! Every command is answered with one line of application data:
//! `ok: <command>`, `refused: <command> outside scope`, or
//! `error: <what>`.

use std::time::Duration;

use vouch_proto::wire::Scope;

/// Application scope bit 8: the gateway may actuate (`led=…`).
pub const ACTUATE: Scope = Scope(1 << 8);
/// Application scope bit 9: the gateway may configure (`interval=…`, `reboot`).
pub const CONFIGURE: Scope = Scope(1 << 9);

/// The shortest telemetry interval a command may set.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest telemetry interval a command may set.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A command from the gateway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// Switch the LED on or off.
    Led(bool),
    /// Send telemetry at this interval.
    Interval(Duration),
    /// Restart the device.
    Reboot,
}

/// Why a command was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Not a command this device knows.
    #[error("unknown command {0:?}")]
    Unknown(String),
    /// A known command with a value out of range or malformed.
    #[error("bad value for {name}: {value:?} ({expected})")]
    BadValue {
        /// The command.
        name: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

impl Command {
    /// Parses one command line (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        let text = text.trim();
        if text == "reboot" {
            return Ok(Command::Reboot);
        }
        let Some((name, value)) = text.split_once('=') else {
            return Err(CommandError::Unknown(text.to_string()));
        };
        match name.trim() {
            "led" => match value.trim() {
                "on" => Ok(Command::Led(true)),
                "off" => Ok(Command::Led(false)),
                v => Err(CommandError::BadValue {
                    name: "led",
                    value: v.to_string(),
                    expected: "on or off",
                }),
            },
            "interval" => {
                let bad = || CommandError::BadValue {
                    name: "interval",
                    value: value.trim().to_string(),
                    expected: "seconds, 0.1 to 86400",
                };
                let secs: f64 = value.trim().parse().map_err(|_| bad())?;
                if !secs.is_finite()
                    || secs < MIN_INTERVAL.as_secs_f64()
                    || secs > MAX_INTERVAL.as_secs_f64()
                {
                    return Err(bad());
                }
                Ok(Command::Interval(Duration::from_secs_f64(secs)))
            }
            _ => Err(CommandError::Unknown(text.to_string())),
        }
    }

    /// The application scope bit the gateway needs for this command.
    pub fn required_scope(&self) -> Scope {
        match self {
            Command::Led(_) => ACTUATE,
            Command::Interval(_) | Command::Reboot => CONFIGURE,
        }
    }
}

/// What the device does with one message from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The command to carry out, if it is allowed.
    pub command: Option<Command>,
    /// The reply to send back.
    pub reply: String,
    /// Whether the command was refused for lack of scope (log at warn).
    pub refused: bool,
}

/// Decides what to do with `text` under `granted`: parse it, check its scope
/// bit, and word the reply.
pub fn decide(text: &str, granted: Scope) -> Decision {
    let shown = printable(text.trim().as_bytes());
    match Command::parse(text) {
        Ok(cmd) if granted.contains(cmd.required_scope()) => Decision {
            command: Some(cmd),
            reply: format!("ok: {shown}"),
            refused: false,
        },
        Ok(_) => Decision {
            command: None,
            reply: format!("refused: {shown} outside scope"),
            refused: true,
        },
        Err(e) => Decision {
            command: None,
            reply: format!("error: {e}"),
            refused: false,
        },
    }
}

/// One telemetry message: a JSON line with a sequence number and a simulated
/// temperature.
pub fn telemetry(seq: u64, led: bool) -> String {
    // A slow, deterministic wobble around 21 °C.
    let temp = 21.0 + 1.5 * ((seq as f64) / 7.0).sin();
    format!("{{\"seq\":{seq},\"temp_c\":{temp:.2},\"led\":{led}}}")
}

/// A message as one printable line: UTF-8 text with control characters
/// escaped, or `0x…` hex for anything else.
pub fn printable(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(s) => s
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect(),
        Err(_) => {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_need_their_bits() {
        assert_eq!(Command::parse("led=on"), Ok(Command::Led(true)));
        assert_eq!(Command::parse(" led = off \n"), Ok(Command::Led(false)));
        assert_eq!(
            Command::parse("interval=2.5"),
            Ok(Command::Interval(Duration::from_millis(2500)))
        );
        assert_eq!(Command::parse("reboot"), Ok(Command::Reboot));
        assert!(matches!(
            Command::parse("interval=0"),
            Err(CommandError::BadValue { .. })
        ));
        assert!(matches!(
            Command::parse("interval=NaN"),
            Err(CommandError::BadValue { .. })
        ));
        assert!(matches!(
            Command::parse("led=blink"),
            Err(CommandError::BadValue { .. })
        ));
        assert!(matches!(
            Command::parse("unlock"),
            Err(CommandError::Unknown(_))
        ));

        let base = Scope::TELEMETRY.union(Scope::COMMAND);
        let d = decide("led=on", base.union(ACTUATE));
        assert_eq!(
            (d.command, d.reply.as_str(), d.refused),
            (Some(Command::Led(true)), "ok: led=on", false)
        );
        let d = decide("interval=5", base.union(ACTUATE));
        assert_eq!(d.command, None);
        assert_eq!(d.reply, "refused: interval=5 outside scope");
        assert!(d.refused);
        let d = decide("reboot", base);
        assert!(d.refused);
        let d = decide("dance", base.union(ACTUATE).union(CONFIGURE));
        assert_eq!(d.reply, "error: unknown command \"dance\"");
    }

    #[test]
    fn printable_is_one_line() {
        assert_eq!(printable(b"led=on"), "led=on");
        assert_eq!(printable(b"a\nb"), "a\\nb");
        assert_eq!(printable(&[0xff, 0x00]), "0xff00");
        assert!(telemetry(3, true).starts_with("{\"seq\":3,\"temp_c\":"));
    }
}
