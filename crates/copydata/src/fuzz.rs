//! Entry points for fuzzing the decoders that read what another process
//! wrote (`tests/fuzz.rs`, `scripts/campaign.sh`). Each takes arbitrary
//! bytes and must return without panicking, whatever they are. Not part of
//! the library's API: hidden from the docs and free to change.

/// The single-instance launch record: decoded, and whatever decodes must
/// encode back to a record that decodes to the same launch.
pub fn launch_record(data: &[u8]) {
    use crate::instance::wire::{decode, encode};
    if let Ok(record) = decode(data) {
        let again = encode(&record).expect("a decoded record encodes");
        assert_eq!(decode(&again).expect("a re-encoded record decodes"), record, "the record changed");
    }
}

/// The inheritance token (`COPYDATA_SECTIONS`), and the numbers in it.
pub fn inherit_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    if let Ok(entries) = crate::inherit::decode(token) {
        for e in entries {
            for field in e.fields {
                let _ = crate::inherit::number::<u64>(field, "field");
            }
        }
    }
}

/// The Windows backend's set-up envelopes (hello, answer) and attachment
/// lists, as a peer could write them (parsed the same way on every
/// platform).
pub fn windows_envelopes(data: &[u8]) {
    use crate::fast::envelope::{answer_values, parse_answer, parse_attachments, parse_hello, reason};
    let _ = parse_hello(data);
    if let Ok(head) = parse_answer(data) {
        let _ = answer_values(&head);
        let _ = reason(&head);
    }
    if let Some((&shape, rest)) = data.split_first() {
        let _ = parse_attachments(rest, shape & 1 == 1, usize::from(shape >> 1) % 40);
    }
}

/// Records of a connection's ring, written by a peer: the input describes
/// records (kind, flags, length, word, inline bytes) that are pushed into a
/// ring the way a sender does, with some stamps and headers then
/// overwritten by raw input bytes; the receiver's side reads them back,
/// checks each (`Consumer::peek`, the record parser) and moves on.
pub fn ring_records(data: &[u8]) {
    use crate::fast::ring::{Consumer, Producer, RING_HEADER, RingPtr, max_inline, pack_flags};
    const CAP: usize = 4096;
    #[repr(C, align(128))]
    struct Area([u8; RING_HEADER + CAP]);
    let mut area = Box::new(Area([0; RING_HEADER + CAP]));
    // SAFETY: `area` is 128-byte aligned, RING_HEADER + CAP bytes long and
    // outlives every use of the ring below; CAP is a power of two >= 4 KiB.
    let ring = unsafe { RingPtr::new(area.0.as_mut_ptr(), CAP) };
    let mut producer = Producer::new(ring);
    let mut input = data;
    let take = |input: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head.to_vec())
    };
    let mut raw_writes = Vec::new();
    while let Some(h) = take(&mut input, 22) {
        let kind = u32::from(h[0] % 8);
        let user = u32::from(h[1] & 0x7);
        let len = u64::from_le_bytes(h[2..10].try_into().expect("8"));
        let word = u64::from_le_bytes(h[10..18].try_into().expect("8"));
        let inline_len = usize::from(u16::from_le_bytes([h[18], h[19]])) % (max_inline(CAP) + 1);
        let n = inline_len.min(input.len());
        let Some(inline) = take(&mut input, n) else { break };
        // Raw damage after the record: (offset in the data area, byte).
        if h[20] & 1 == 1 {
            raw_writes.push((usize::from(h[21]) * 16 % CAP, h[20]));
        }
        match producer.push(kind, pack_flags(user, inline.len()), len, word, &[&inline]) {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    for (at, byte) in raw_writes {
        area.0[RING_HEADER + at] = byte;
    }
    let mut consumer = Consumer::new(ring);
    for _ in 0..256 {
        match consumer.peek() {
            Ok(Some(rec)) => {
                let _ = crate::fast::conn::parse(&consumer, &rec);
                if rec.inline > 0 {
                    let _ = consumer.read_vec(&rec, 0, rec.inline);
                }
                consumer.advance(&rec, false);
            }
            _ => return,
        }
    }
}
