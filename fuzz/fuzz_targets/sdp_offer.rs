//! Any text as a client's SDP offer: the peer connection's parser and the room's checks of
//! the offer (m-lines, directions, tracks, codecs, limits) never panic, and the room stays
//! consistent whether it takes the offer or removes its sender.

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::json;
use server::signaling::harness::RoomHarness;
use server::Config;
use shared::client_event::{SdpOffer, SdpType, SessionDescription};
use shared::{ClientEvent, TrackId};

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(Config::defaults)
}

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let _ = RTCSessionDescription::offer(sdp.to_owned());

    let mut room = RoomHarness::new(config(), false);
    let (ann, bob) = (room.connect(), room.connect());
    room.join(ann, json!({})).expect("an empty room takes Ann");
    room.join(bob, json!({})).expect("and Bob");
    let owner = room.id(ann).clone();
    // Every mid a small offer may use names a track of Ann's.
    let mid_to_track_id: BTreeMap<String, TrackId> = (0..16u128)
        .map(|mid| {
            (
                mid.to_string(),
                TrackId::new(&owner, uuid::Uuid::from_u128(mid + 1)),
            )
        })
        .collect();
    let offer = SdpOffer {
        sdp_offer: SessionDescription {
            sdp_type: SdpType::Offer,
            sdp: sdp.to_owned(),
        },
        track_id_to_track_metadata: BTreeMap::new(),
        mid_to_track_id,
    };
    room.event(ann, ClientEvent::SdpOffer(offer));
    room.check();
    room.told(ann);
    room.told(bob);
});
