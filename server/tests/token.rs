//! `videoroom token`: prints a join token that the server with the same secret accepts for
//! that room, and explains what is missing without a secret.

use std::process::Command;

use server::access::JoinSecret;
use shared::RoomId;

#[test]
fn the_token_command_prints_a_token_for_the_room() {
    let output = Command::new(env!("CARGO_BIN_EXE_videoroom"))
        .args([
            "token",
            "--room",
            "standup",
            "--name",
            "Ann",
            "--join-secret",
            "north-wind",
        ])
        .env_remove("VIDEOROOM_JOIN_SECRET")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = JoinSecret::new("north-wind")
        .check(Some(token.trim()), &RoomId::new("standup").unwrap())
        .unwrap();
    assert_eq!(claims.name, "Ann");
}

#[test]
fn without_a_secret_the_token_command_says_what_it_needs() {
    let output = Command::new(env!("CARGO_BIN_EXE_videoroom"))
        .args(["token", "--room", "standup", "--name", "Ann"])
        .env_remove("VIDEOROOM_JOIN_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--join-secret"));
}
