//! Any text as the server reads a WebSocket message (a Phoenix frame, then the media event in
//! it) and as either side decodes a media event: decoding never panics, and whatever decodes
//! encodes to text that decodes to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::{ClientEvent, Frame, ServerEvent};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = Frame::decode(text) {
        let again = Frame::decode(&frame.encode()).expect("an encoded frame decodes");
        assert_eq!(again, frame);
        if let Ok(event) = frame.media_event_data() {
            media_event(event);
        }
    }
    media_event(text);
});

fn media_event(text: &str) {
    if let Ok(event) = ClientEvent::decode(text) {
        let again = ClientEvent::decode(&event.encode()).expect("an encoded client event decodes");
        assert_eq!(again, event);
    }
    if let Ok(event) = ServerEvent::decode(text) {
        let again = ServerEvent::decode(&event.encode()).expect("an encoded server event decodes");
        assert_eq!(again, event);
    }
}
