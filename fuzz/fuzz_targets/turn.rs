//! Any bytes as the embedded TURN server reads them from a client, before it knows who sent
//! them: as a datagram (a STUN message or ChannelData) and as a TCP/TLS stream cut into frames.
//! Reading never panics, and a message that parses writes back, attribute by attribute, to one
//! that parses the same, its integrity checkable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use server::turn::stun::{channel_data, frame_length, long_term_key, Message, Writer};

fuzz_target!(|data: &[u8]| {
    datagram(data);
    let mut stream = data;
    while let Some(Some(length)) = frame_length(stream) {
        let Some(frame) = stream.get(..length) else {
            break;
        };
        datagram(frame);
        stream = &stream[length..];
    }
});

fn datagram(bytes: &[u8]) {
    if let Some((number, payload)) = channel_data(bytes) {
        assert!((0x4000..=0x4FFF).contains(&number));
        assert!(payload.len() + 4 <= bytes.len());
        return;
    }
    let Ok(message) = Message::parse(bytes) else {
        return;
    };
    let key = long_term_key(message.text(0x0006).unwrap_or(""), "videoroom", "password");
    let _ = message.integrity_matches(&key);
    for kind in [0x0012, 0x0016, 0x0020] {
        let _ = message.xor_address(kind);
        let _ = message.xor_addresses(kind).count();
    }
    let _ = message.u32(0x000D);
    let mut written = Vec::new();
    let mut writer = Writer::new(
        &mut written,
        message.method,
        message.class,
        message.transaction,
    );
    let mut attributes = 0;
    for attribute in message.attributes() {
        let attribute = attribute.expect("a parsed message's attributes read");
        if attribute.kind != 0x0008 {
            writer.attribute(attribute.kind, attribute.value);
            attributes += 1;
        }
    }
    writer.integrity(&key);
    let again = Message::parse(&written).expect("a written message parses");
    assert_eq!((again.method, again.class), (message.method, message.class));
    assert_eq!(again.transaction, message.transaction);
    assert_eq!(again.attributes().count(), attributes + 1);
    assert!(again.integrity_matches(&key));
}
