//! Typed messages: serde types as requests and replies (cargo feature
//! `serde`).
//!
//! A [`TypedSender<Req, Resp>`] sends any `Req: Serialize` and decodes the
//! reply as `Resp: DeserializeOwned`. On the other side,
//! [`Mailbox::serve_typed`] runs a handler that takes the decoded `Req` and
//! returns a [`TypedReply<Resp>`]: a code (as the `LRESULT` of an untyped
//! [`Reply`]) beside the value. [`Mailbox::recv_typed`] receives one request
//! at a time instead.
//!
//! ```
//! use copydata::Mailbox;
//! use copydata::typed::{TypedReply, TypedSender};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! enum Ask {
//!     Add(i64, i64),
//!     Greet { name: String },
//! }
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum Answer {
//!     Sum(i64),
//!     Greeting(String),
//! }
//!
//! let name = &format!("my-app-{}", std::process::id());
//! // The receiver.
//! let server = Mailbox::bind(name)?.serve_typed(|ask: Ask, _message| {
//!     TypedReply::from(match ask {
//!         Ask::Add(a, b) => Answer::Sum(a + b),
//!         Ask::Greet { name } => Answer::Greeting(format!("hello, {name}")),
//!     })
//! });
//!
//! // A sender, usually in another process.
//! let mut sender = TypedSender::<Ask, Answer>::connect(name)?;
//! let reply = sender.send(&Ask::Add(2, 3))?;
//! assert_eq!((reply.code, reply.value), (0, Answer::Sum(5)));
//! let reply = sender.send(&Ask::Greet { name: "Ada".into() })?;
//! assert_eq!(reply.value, Answer::Greeting("hello, Ada".into()));
//! # drop(server);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Encoding and tag
//!
//! Values are encoded with [postcard](https://docs.rs/postcard) (compact:
//! integers as varints, no field names). It is not self-describing, so both
//! ends must use the same types: change them together, or keep a version in
//! them (for example an enum with one variant per version, new ones added at
//! the end). Distinguish kinds of request with an enum, as above.
//!
//! Typed messages carry the fixed tag [`TAG`] (`dwData` in Win32 terms; the
//! bytes `postcard` read as a big-endian number). A typed receiver refuses
//! any other tag with a reason, so raw bytes sent to it by mistake (say with
//! `copydata send`) are never taken for a value. To take typed and untyped
//! messages on one mailbox, receive with [`Mailbox::recv`] and decode those
//! tagged [`TAG`] with [`TypedRequest::decode`].
//!
//! # When decoding fails
//!
//! Nothing panics on bad input. A request that is not a valid `Req` (another
//! tag, bytes of another type, garbage, bytes left over after the value) is
//! refused: the sender gets [`SendError::Refused`] (in
//! [`TypedSendError::Send`]) whose reason names the expected type and what
//! was wrong, and the mailbox goes on serving the next message. A reply that
//! is not a valid `Resp` gives the sender [`TypedSendError::Decode`].
//!
//! Neither does a peer's value that nests a recursive type (a tree, a
//! linked list) deeper than the decoding thread's stack allows: a value is
//! decoded at most [`MAX_DEPTH`] (128) levels deep, each sequence, map,
//! struct, enum variant, option and newtype counting one, and a deeper one
//! is refused like other bad input.
//!
//! # Sections beside a typed message
//!
//! Sections travel beside the encoded value as they do beside bytes
//! ([`TypedSender::send_with_sections`] attaches them, the handler finds them
//! in [`Message::sections`]); the value refers to a section by its index in
//! that list:
//!
//! ```
//! use copydata::typed::{TypedReply, TypedSender};
//! use copydata::{Mailbox, Section};
//! use serde::{Deserialize, Serialize};
//!
//! /// An image whose pixels are in the message's section `pixels`.
//! #[derive(Serialize, Deserialize)]
//! struct Frame {
//!     pixels: usize,
//!     width: u32,
//!     height: u32,
//! }
//!
//! let name = &format!("my-viewer-{}", std::process::id());
//! let server = Mailbox::bind(name)?.serve_typed(|frame: Frame, message| {
//!     let len = frame.width as usize * frame.height as usize * 4;
//!     // A bad index or size is an answer (here code -1), not a panic.
//!     let Some(first) = message.sections().get(frame.pixels).and_then(|s| s.map(0, len).ok()) else {
//!         return TypedReply::new(-1, 0u8);
//!     };
//!     TypedReply::new(0, first.to_vec()[0]) // the first byte, say
//! });
//!
//! let pixels = Section::anonymous(64 * 48 * 4)?;
//! pixels.map_mut(0, 1)?.write_at(0, &[200])?;
//! let mut sender = TypedSender::<Frame, u8>::connect(name)?;
//! let frame = Frame { pixels: 0, width: 64, height: 48 };
//! let reply = sender.send_with_sections(&frame, &[&pixels], None)?;
//! assert_eq!((reply.code, reply.value), (0, 200));
//! # drop(server);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod depth;

use std::any::type_name;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{RecvError, ReplyError, SendError};
use crate::mailbox::{Mailbox, Message, Peer, Reply, Request, Sender, SenderOptions, Server};
use crate::section::Section;

pub use self::depth::MAX_DEPTH;
use self::depth::{Bounded, Limit};

/// The tag of every typed message: the bytes `postcard` as a big-endian
/// number (`0x706f_7374_6361_7264`).
pub const TAG: u64 = u64::from_be_bytes(*b"postcard");

// ---------------------------------------------------------------- errors

/// A value could not be encoded (its `Serialize` implementation failed, or
/// it is a sequence of unknown length, which postcard cannot write).
#[derive(Debug)]
pub struct EncodeError {
    what: &'static str,
    type_name: &'static str,
    source: postcard::Error,
}

impl EncodeError {
    fn new<T: ?Sized>(what: &'static str, source: postcard::Error) -> EncodeError {
        EncodeError { what, type_name: type_name::<T>(), source }
    }

    /// The type that could not be encoded.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not encode {} ({}): {}", self.what, self.type_name, self.source)
    }
}

impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Bytes that are not a valid encoded value of the expected type.
#[derive(Debug)]
pub struct DecodeError {
    what: &'static str,
    type_name: &'static str,
    len: usize,
    kind: DecodeKind,
}

#[derive(Debug)]
enum DecodeKind {
    Format(postcard::Error),
    LeftOver(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl DecodeError {
    /// The type the bytes were to be decoded as.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// How many bytes there were.
    pub fn byte_len(&self) -> usize {
        self.len
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes) is not a valid {}: ", self.what, self.len, self.type_name)?;
        match &self.kind {
            DecodeKind::Format(e) => write!(f, "{e}"),
            DecodeKind::LeftOver(n) => write!(f, "{n} bytes left over after the value"),
            DecodeKind::TooDeep => write!(f, "it nests deeper than {MAX_DEPTH} levels"),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            DecodeKind::Format(e) => Some(e),
            DecodeKind::LeftOver(_) | DecodeKind::TooDeep => None,
        }
    }
}

/// Sending a typed message failed: [`TypedSender`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedSendError {
    /// The request could not be encoded; nothing was sent.
    #[error("{0}")]
    Encode(#[source] EncodeError),
    /// Sending failed as an untyped send fails. A request the receiver could
    /// not decode comes back as [`SendError::Refused`], the reason naming
    /// the failure.
    #[error("{0}")]
    Send(#[source] SendError),
    /// The receiver replied, but not with a valid `Resp` (the two sides
    /// disagree on the reply's type). The connection stays usable.
    #[error("mailbox {name:?} replied with code {code}, but {source}")]
    Decode {
        /// The mailbox's name.
        name: String,
        /// The reply's code.
        code: i64,
        /// What was wrong with the reply's bytes.
        #[source]
        source: DecodeError,
    },
}

/// Receiving a typed message failed: [`Mailbox::recv_typed`],
/// [`TypedRequest::decode`].
///
/// [`NotTyped`](Self::NotTyped) and [`Decode`](Self::Decode) concern one
/// message, which has been refused (its sender learns why): receive the
/// next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedRecvError {
    /// No message arrived in time, or the mailbox is closed.
    #[error("{0}")]
    Recv(#[source] RecvError),
    /// A message with another tag than [`TAG`] came (not a typed message);
    /// it was refused.
    #[error("refused a message from pid {}: tag {tag:#x} is not the typed-message tag", sender.pid)]
    NotTyped {
        /// The message's tag.
        tag: u64,
        /// Who sent it.
        sender: Peer,
    },
    /// A message that is not a valid `Req` came; it was refused.
    #[error("refused a message from pid {}: {source}", sender.pid)]
    Decode {
        /// Who sent it.
        sender: Peer,
        /// What was wrong with its bytes.
        #[source]
        source: DecodeError,
    },
}

impl TypedRecvError {
    /// What the sender is told when its message is refused for this error
    /// (its own pid and "refused" are not repeated to it).
    fn refusal(&self) -> String {
        match self {
            TypedRecvError::Recv(e) => e.to_string(),
            TypedRecvError::NotTyped { tag, .. } => format!("tag {tag:#x} is not the typed-message tag"),
            TypedRecvError::Decode { source, .. } => source.to_string(),
        }
    }
}

/// Replying to a typed message failed: [`TypedRequest::reply`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedReplyError {
    /// The reply could not be encoded; the message was refused with this
    /// reason instead.
    #[error("{0}")]
    Encode(#[source] EncodeError),
    /// Replying failed as an untyped reply fails.
    #[error("{0}")]
    Reply(#[source] ReplyError),
}

impl From<TypedSendError> for io::Error {
    fn from(e: TypedSendError) -> io::Error {
        match e {
            TypedSendError::Send(e) => e.into(),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

impl From<TypedRecvError> for io::Error {
    fn from(e: TypedRecvError) -> io::Error {
        match e {
            TypedRecvError::Recv(e) => e.into(),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

impl From<TypedReplyError> for io::Error {
    fn from(e: TypedReplyError) -> io::Error {
        match e {
            TypedReplyError::Reply(e) => e.into(),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

// ---------------------------------------------------------------- encoding

fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, EncodeError> {
    postcard::to_stdvec(value).map_err(|e| EncodeError::new::<T>(what, e))
}

/// Decodes all of `bytes` as one `T` (bytes left over are an error: they
/// mean the two sides disagree on the type), nested at most [`MAX_DEPTH`]
/// levels deep.
fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    let error = |kind| DecodeError { what, type_name: type_name::<T>(), len: bytes.len(), kind };
    let hit = Cell::new(false);
    let mut de = postcard::Deserializer::from_bytes(bytes);
    match T::deserialize(Bounded { inner: &mut de, limit: Limit::new(&hit) }) {
        Ok(value) => match de.finalize() {
            Ok([]) => Ok(value),
            Ok(rest) => Err(error(DecodeKind::LeftOver(rest.len()))),
            Err(e) => Err(error(DecodeKind::Format(e))),
        },
        Err(_) if hit.get() => Err(error(DecodeKind::TooDeep)),
        Err(e) => Err(error(DecodeKind::Format(e))),
    }
}

/// Decodes a message's or reply's bytes: its payload, or its loan copied
/// out once (a loan's memory could still change under the decoder; the
/// payload as a slice would be a second copy, kept with the message).
fn decode_payload<T: DeserializeOwned>(
    what: &'static str,
    payload: &crate::Payload,
    loan: Option<&crate::LoanView>,
) -> Result<T, DecodeError> {
    match loan {
        Some(loan) => decode(what, &loan.to_vec()),
        None => decode(what, payload),
    }
}

fn decode_request<Req: DeserializeOwned>(message: &Message) -> Result<Req, TypedRecvError> {
    if message.tag() != TAG {
        return Err(TypedRecvError::NotTyped { tag: message.tag(), sender: message.sender() });
    }
    decode_payload("the request", message.payload(), message.loan())
        .map_err(|source| TypedRecvError::Decode { sender: message.sender(), source })
}

// ---------------------------------------------------------------- sending

/// The answer to a typed message: a code (the `LRESULT`, as
/// [`Reply::code`]) beside a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TypedReply<T> {
    /// The reply code.
    pub code: i64,
    /// The reply value.
    pub value: T,
}

impl<T> TypedReply<T> {
    /// A reply with a code and a value.
    pub fn new(code: i64, value: T) -> TypedReply<T> {
        TypedReply { code, value }
    }
}

/// A value with code 0.
impl<T> From<T> for TypedReply<T> {
    fn from(value: T) -> TypedReply<T> {
        TypedReply { code: 0, value }
    }
}

/// A [`Sender`] of `Req` values whose replies are `Resp` values.
///
/// Each method encodes the request, sends it with the tag [`TAG`] like the
/// [`Sender`] method of the same name, and decodes the reply.
pub struct TypedSender<Req: ?Sized, Resp> {
    sender: Sender,
    types: PhantomData<fn(&Req) -> Resp>,
}

impl<Req: ?Sized, Resp> fmt::Debug for TypedSender<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSender")
            .field("sender", &self.sender)
            .field("request", &type_name::<Req>())
            .field("reply", &type_name::<Resp>())
            .finish()
    }
}

impl<Req: ?Sized, Resp> From<Sender> for TypedSender<Req, Resp> {
    fn from(sender: Sender) -> TypedSender<Req, Resp> {
        TypedSender::new(sender)
    }
}

impl<Req: ?Sized, Resp> TypedSender<Req, Resp> {
    /// Sends typed messages through `sender`.
    pub fn new(sender: Sender) -> TypedSender<Req, Resp> {
        TypedSender { sender, types: PhantomData }
    }

    /// Connects to the mailbox `name`, as [`Sender::connect`].
    pub fn connect(name: &str) -> Result<TypedSender<Req, Resp>, SendError> {
        Sender::connect(name).map(TypedSender::new)
    }

    /// Connects to the mailbox `name` with options, as
    /// [`Sender::connect_with`].
    pub fn connect_with(name: &str, options: &SenderOptions) -> Result<TypedSender<Req, Resp>, SendError> {
        Sender::connect_with(name, options).map(TypedSender::new)
    }

    /// The untyped sender, for untyped messages on the same connection.
    pub fn get_mut(&mut self) -> &mut Sender {
        &mut self.sender
    }

    /// The untyped sender.
    pub fn into_inner(self) -> Sender {
        self.sender
    }
}

impl<Req, Resp> TypedSender<Req, Resp>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    fn call(
        &mut self,
        request: &Req,
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<TypedReply<Resp>, TypedSendError> {
        let data = encode("the request", request).map_err(TypedSendError::Encode)?;
        let reply = self.sender.send_with_sections(TAG, &data, sections, timeout).map_err(TypedSendError::Send)?;
        let code = reply.code;
        match decode_payload("the reply", &reply.data, reply.loan()) {
            Ok(value) => Ok(TypedReply { code, value }),
            Err(source) => Err(TypedSendError::Decode { name: self.sender.name().to_string(), code, source }),
        }
    }

    /// Sends and waits for the reply, however long the handler takes; see
    /// [`Sender::send`].
    #[doc(alias = "SendMessage")]
    pub fn send(&mut self, request: &Req) -> Result<TypedReply<Resp>, TypedSendError> {
        self.call(request, &[], None)
    }

    /// Sends and waits at most `timeout` for the reply; see
    /// [`Sender::send_timeout`].
    #[doc(alias = "SendMessageTimeout")]
    pub fn send_timeout(&mut self, request: &Req, timeout: Duration) -> Result<TypedReply<Resp>, TypedSendError> {
        self.call(request, &[], Some(timeout))
    }

    /// Sends with sections attached (the handler finds them in
    /// [`Message::sections`], in this order; see the [module
    /// docs](self#sections-beside-a-typed-message)); `timeout` as in
    /// [`Sender::send_with_sections`].
    pub fn send_with_sections(
        &mut self,
        request: &Req,
        sections: &[&Section],
        timeout: Option<Duration>,
    ) -> Result<TypedReply<Resp>, TypedSendError> {
        self.call(request, sections, timeout)
    }

    /// Posts a notification: no reply is awaited; see [`Sender::post`]. A
    /// posted request the receiver cannot decode is dropped there (and
    /// logged), since no reply can say so.
    #[doc(alias = "PostMessage")]
    pub fn post(&mut self, request: &Req) -> Result<(), TypedSendError> {
        let data = encode("the request", request).map_err(TypedSendError::Encode)?;
        self.sender.post(TAG, &data).map_err(TypedSendError::Send)
    }

    /// Posts, waiting at most `timeout` for room in the queue; see
    /// [`Sender::post_timeout`].
    pub fn post_timeout(&mut self, request: &Req, timeout: Duration) -> Result<(), TypedSendError> {
        let data = encode("the request", request).map_err(TypedSendError::Encode)?;
        self.sender.post_timeout(TAG, &data, timeout).map_err(TypedSendError::Send)
    }

    /// Posts if the queue has room now, else fails at once; see
    /// [`Sender::try_post`].
    pub fn try_post(&mut self, request: &Req) -> Result<(), TypedSendError> {
        let data = encode("the request", request).map_err(TypedSendError::Encode)?;
        self.sender.try_post(TAG, &data).map_err(TypedSendError::Send)
    }
}

// ---------------------------------------------------------------- receiving

/// A typed message waiting for its reply; from [`Mailbox::recv_typed`] or
/// [`TypedRequest::decode`].
///
/// Dereferences to the [`Message`] (its sender, sections, ...). Answer with
/// [`reply`](Self::reply) or [`refuse`](Self::refuse); dropped without
/// either, it is refused.
#[derive(Debug)]
pub struct TypedRequest<Req> {
    value: Req,
    request: Request,
}

impl<Req: DeserializeOwned> TypedRequest<Req> {
    /// Decodes an untyped request as a `Req`. A request with another tag
    /// than [`TAG`] or bytes that are not a valid `Req` is refused (its
    /// sender learns why) and the error says what was wrong.
    pub fn decode(request: Request) -> Result<TypedRequest<Req>, TypedRecvError> {
        match decode_request(&request) {
            Ok(value) => Ok(TypedRequest { value, request }),
            Err(e) => {
                request.refuse(&e.refusal());
                Err(e)
            }
        }
    }
}

impl<Req> TypedRequest<Req> {
    /// The decoded request.
    pub fn value(&self) -> &Req {
        &self.value
    }

    /// The decoded request and the untyped request, to answer later.
    pub fn into_parts(self) -> (Req, Request) {
        (self.value, self.request)
    }

    /// The message, mutably (to take its sections).
    pub fn message_mut(&mut self) -> &mut Message {
        self.request.message_mut()
    }

    /// Sends the reply; the sender's `send` returns it. A reply that cannot
    /// be encoded refuses the message with the reason instead, and is
    /// [`TypedReplyError::Encode`].
    pub fn reply<Resp: Serialize>(self, reply: TypedReply<Resp>) -> Result<(), TypedReplyError> {
        if !self.request.expects_reply() {
            // Posted: nothing goes back, so nothing to encode.
            return self.request.reply(Reply::code(reply.code)).map_err(TypedReplyError::Reply);
        }
        match encode("the reply", &reply.value) {
            Ok(data) => self.request.reply(Reply::new(reply.code, data)).map_err(TypedReplyError::Reply),
            Err(e) => {
                self.request.refuse(&e.to_string());
                Err(TypedReplyError::Encode(e))
            }
        }
    }

    /// Refuses the message; the sender gets [`SendError::Refused`].
    pub fn refuse(self, reason: &str) {
        self.request.refuse(reason);
    }
}

impl<Req> Deref for TypedRequest<Req> {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.request
    }
}

impl Mailbox {
    /// Runs `handler` for every typed message, as [`serve`](Self::serve)
    /// runs an untyped one: with the decoded request and the [`Message`]
    /// (its sender, its sections), replying with the encoded value and code
    /// it returns.
    ///
    /// A message that is not a valid `Req` (or not tagged [`TAG`]) never
    /// reaches the handler: it is refused with the reason, which is also
    /// logged (the sender of a posted message cannot learn it), and serving
    /// goes on. A reply that cannot be encoded refuses the message with the
    /// reason.
    /// See the [module docs](crate::typed).
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn serve_typed<Req, Resp, F>(self, handler: F) -> Server
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req, &mut Message) -> TypedReply<Resp> + Send + Sync + 'static,
    {
        let name = self.name().to_string();
        self.serve_or_refuse(move |message| {
            let request = decode_request::<Req>(message).map_err(|e| {
                log::warn!("mailbox {name}: {e}");
                e.refusal()
            })?;
            let reply = handler(request, message);
            if !message.expects_reply() {
                return Ok(Reply::code(reply.code));
            }
            let data = encode("the reply", &reply.value).map_err(|e| {
                log::warn!("mailbox {name}: refused a message from pid {}: {e}", message.sender().pid);
                e.to_string()
            })?;
            Ok(Reply::new(reply.code, data))
        })
    }

    /// Waits for the next typed message. A message that is not a valid
    /// `Req` is refused and returned as an error (receive the next one);
    /// see [`TypedRecvError`].
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn recv_typed<Req: DeserializeOwned>(&self) -> Result<TypedRequest<Req>, TypedRecvError> {
        TypedRequest::decode(self.recv().map_err(TypedRecvError::Recv)?)
    }

    /// Waits at most `timeout` for the next typed message; as
    /// [`recv_typed`](Self::recv_typed).
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn recv_typed_timeout<Req: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<TypedRequest<Req>, TypedRecvError> {
        TypedRequest::decode(self.recv_timeout(timeout).map_err(TypedRecvError::Recv)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_left_over_bytes_are_an_error() {
        let bytes = encode("v", &(1u8, "two".to_string())).unwrap();
        assert_eq!(decode::<(u8, String)>("v", &bytes).unwrap(), (1, "two".to_string()));
        let e = decode::<u8>("the reply", &bytes).unwrap_err();
        assert!(matches!(e.kind, DecodeKind::LeftOver(4)), "{e}");
        assert_eq!(e.to_string(), "the reply (5 bytes) is not a valid u8: 4 bytes left over after the value");
        let e = decode::<(u64, u64, u64)>("the request", &[0xff]).unwrap_err();
        assert!(matches!(e.kind, DecodeKind::Format(_)), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    /// A recursive type, as a peer could nest it.
    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Tree {
        Leaf,
        Node(Box<Tree>),
        Pair(Option<Box<Tree>>, Vec<Tree>),
    }

    fn nested(depth: usize) -> Tree {
        (0..depth).fold(Tree::Leaf, |t, i| if i % 2 == 0 { Tree::Node(Box::new(t)) } else { Tree::Pair(None, vec![t]) })
    }

    #[test]
    fn a_value_nested_too_deep_is_a_decode_error_not_a_stack_overflow() {
        // Within the bound (a `Pair` level nests three times: the enum, its
        // fields, and the option or vector), every kind of level decodes.
        let ok = Tree::Pair(Some(Box::new(nested(40))), vec![Tree::Leaf, nested(20)]);
        let bytes = encode("v", &ok).unwrap();
        assert_eq!(decode::<Tree>("v", &bytes).unwrap(), ok);
        // A `Node` level is one byte: a megabyte of them would overflow any
        // thread's stack without the bound.
        let mut deep = vec![1u8; 1 << 20];
        deep.push(0);
        let e = decode::<Tree>("the request", &deep).unwrap_err();
        assert!(matches!(e.kind, DecodeKind::TooDeep), "{e}");
        assert!(e.to_string().ends_with("it nests deeper than 128 levels"), "{e}");
        // Just past the bound, and just within: `n` `Node` bytes and a
        // `Leaf` nest `n + 1` enums.
        let mut edge = vec![1u8; MAX_DEPTH];
        edge.push(0);
        assert!(matches!(decode::<Tree>("v", &edge).unwrap_err().kind, DecodeKind::TooDeep));
        edge.truncate(MAX_DEPTH - 1);
        edge.push(0);
        assert!(decode::<Tree>("v", &edge).is_ok());
    }

    #[test]
    fn a_sequence_of_unknown_length_is_an_encode_error() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                s.serialize_seq(None)?.end()
            }
        }
        let e = encode("the request", &Unsized).unwrap_err();
        assert!(e.type_name().ends_with("Unsized"), "{e}");
    }
}
