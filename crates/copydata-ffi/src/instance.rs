//! Single-instance applications: the first launch of an app id becomes the
//! primary; every later one forwards its arguments to it and gets its
//! answer (the `CreateMutex` + `FindWindow` + `SendMessage(WM_COPYDATA)`
//! idiom, race-free and bounded in time).

use std::ffi::{CString, c_char, c_void};
use std::time::Duration;

use copydata::instance::{Answer, InstanceOptions, SingleInstance};

use crate::buffer;
use crate::error::{Error, Status, bytes_arg, give_back, guard, guard_value, handle, os_string, out_arg, str_arg};
use crate::mailbox::timeout_arg;

/// The primary instance of an app id: it receives later launches with
/// `copydata_instance_recv`. Opaque; close it with
/// `copydata_instance_close`, which frees the app id for the next launch.
pub struct Instance {
    inner: copydata::instance::Primary,
}

/// A later launch, forwarded to the primary: its arguments, working
/// directory, bytes and process id. Opaque; answer it with
/// `copydata_launch_answer`, which also frees it.
pub struct Launch {
    inner: copydata::instance::Launch,
    /// The arguments and the working directory as C strings: bytes on
    /// Linux, UTF-8 on Windows (where what is not valid UTF-16 is replaced).
    args: Vec<CString>,
    cwd: Option<CString>,
    /// The forwarded environment variables, names and values, as C strings.
    env: Vec<(CString, CString)>,
}

/// An OS string for C: its bytes on Unix, UTF-8 elsewhere; cut at a NUL
/// (which no C string can hold).
fn c_string(s: &std::ffi::OsStr) -> CString {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = s.to_string_lossy().into_owned().into_bytes();
    CString::new(bytes).unwrap_or_else(|e| {
        let at = e.nul_position();
        let mut bytes = e.into_vec();
        bytes.truncate(at);
        CString::new(bytes).expect("cut before the first NUL")
    })
}

/// Becomes the primary instance of `app_id`, or forwards this launch to
/// the running primary and returns its answer.
///
/// The launch carries arguments, this process's working directory and
/// `len` bytes at `data` (NULL and 0 for none). The arguments: with `argv`
/// NULL (and `argc` 0), this process's own, without the program name,
/// exactly as the OS holds them (on Windows the wide command line, so
/// nothing is lost to the ANSI code page of `main`'s `argv`); otherwise
/// the `argc` strings at `argv` (bytes on Linux, UTF-8 on Windows; `argc`
/// 0 with any non-NULL `argv` sends none).
///
/// - This launch is the primary: `*primary` is its handle, to receive later
///   launches with `copydata_instance_recv`; the answer outputs are 0 and
///   NULL.
/// - Another process is the primary: `*primary` is NULL, and the
///   primary's answer is in `*answer_code` (for the secondary to exit
///   with) and `*answer_data` / `*answer_len` (a buffer to free with
///   `copydata_free`, NULL when empty). Each answer output may be NULL if
///   not wanted.
///
/// Waits at most `timeout_ms` (`COPYDATA_INFINITE`: as long as it takes)
/// for a primary to take the launch and answer, the election included; 0
/// only tries to become the primary (with a primary running it fails at
/// once, nothing forwarded). Fails with `COPYDATA_STATUS_TIMED_OUT` (the
/// primary is stopped or hung; a launch it had taken may still be handled
/// later), `COPYDATA_STATUS_REFUSED`, `COPYDATA_STATUS_INCOMPATIBLE`,
/// `COPYDATA_STATUS_INVALID_ARGUMENT` (an app id that is not a copydata
/// name, a NULL string among the arguments, one that is not UTF-8 on
/// Windows).
///
/// # Safety
///
/// `app_id` is NULL or a NUL-terminated string; `argv` is NULL or points
/// to `argc` pointers, each NULL or a NUL-terminated string; `data` is
/// NULL or points to `len` readable bytes; `primary` is NULL or points to
/// storage for a pointer; each answer output is NULL or points to writable
/// storage of its type.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: inputs, then outputs
pub unsafe extern "C" fn copydata_instance_acquire(
    app_id: *const c_char,
    argc: usize,
    argv: *const *const c_char,
    data: *const c_void,
    len: usize,
    timeout_ms: u32,
    primary: *mut *mut Instance,
    answer_code: *mut i32,
    answer_data: *mut *mut c_void,
    answer_len: *mut usize,
) -> Status {
    let none = std::ptr::null();
    // SAFETY: the pointers are as `acquire` needs (this function's
    // contract); no environment variables are named.
    unsafe {
        acquire(app_id, argc, argv, 0, none, data, len, timeout_ms, primary, answer_code, answer_data, answer_len)
    }
}

/// `copydata_instance_acquire`, also forwarding the environment variables
/// named by the `env_count` strings at `env_names` (NULL when 0) that are
/// set in this process, for the primary to read with `copydata_launch_env`
/// (a launcher's `DISPLAY`, `VIRTUAL_ENV`, ...). Names are bytes on Linux,
/// UTF-8 on Windows.
///
/// # Safety
///
/// As `copydata_instance_acquire`; `env_names` is NULL or points to
/// `env_count` pointers, each NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: inputs, then outputs
pub unsafe extern "C" fn copydata_instance_acquire_env(
    app_id: *const c_char,
    argc: usize,
    argv: *const *const c_char,
    env_count: usize,
    env_names: *const *const c_char,
    data: *const c_void,
    len: usize,
    timeout_ms: u32,
    primary: *mut *mut Instance,
    answer_code: *mut i32,
    answer_data: *mut *mut c_void,
    answer_len: *mut usize,
) -> Status {
    // SAFETY: the pointers are as `acquire` needs (this function's
    // contract).
    unsafe {
        acquire(
            app_id,
            argc,
            argv,
            env_count,
            env_names,
            data,
            len,
            timeout_ms,
            primary,
            answer_code,
            answer_data,
            answer_len,
        )
    }
}

/// The C strings at `argv` (`argc` of them) as OS strings; `what` names
/// them in errors ("argv").
///
/// # Safety
///
/// `argv` is not NULL and points to `argc` pointers, each NULL or a
/// NUL-terminated string, read only during the call.
unsafe fn os_strings(argv: *const *const c_char, argc: usize, what: &str) -> Result<Vec<std::ffi::OsString>, Error> {
    // SAFETY: `argv` points to `argc` pointers, read only during this call
    // (the contract).
    let argv = unsafe { crate::error::array_arg(argv, argc, what) }?;
    let mut out = Vec::new();
    for (i, &arg) in argv.iter().enumerate() {
        if arg.is_null() {
            return Err(Error::invalid(format!("{what}[{i}] is NULL")));
        }
        // SAFETY:
        // - not NULL, and a NUL-terminated string read only during this
        //   call (the contract).
        let arg = os_string(unsafe { std::ffi::CStr::from_ptr(arg) })
            .ok_or_else(|| Error::invalid(format!("{what}[{i}] is not UTF-8")))?;
        out.push(arg);
    }
    Ok(out)
}

/// The body of both acquire functions.
///
/// # Safety
///
/// As `copydata_instance_acquire_env`.
#[allow(clippy::too_many_arguments)] // the C functions' arguments, passed on
unsafe fn acquire(
    app_id: *const c_char,
    argc: usize,
    argv: *const *const c_char,
    env_count: usize,
    env_names: *const *const c_char,
    data: *const c_void,
    len: usize,
    timeout_ms: u32,
    primary: *mut *mut Instance,
    answer_code: *mut i32,
    answer_data: *mut *mut c_void,
    answer_len: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY:
        // - each output is NULL or writable storage of its type (this
        //   function's contract).
        let (mut code_out, mut data_out, mut len_out) =
            unsafe { (answer_code.as_mut(), answer_data.as_mut(), answer_len.as_mut()) };
        // Cleared first, so that a primary or a failure leaves nothing to free.
        if let Some(c) = code_out.as_deref_mut() {
            *c = 0;
        }
        if let Some(d) = data_out.as_deref_mut() {
            *d = std::ptr::null_mut();
        }
        if let Some(n) = len_out.as_deref_mut() {
            *n = 0;
        }
        // SAFETY:
        // - `primary` is NULL or valid storage (the contract).
        let primary = unsafe { out_arg(primary) }?;
        // SAFETY:
        // - `app_id` is NULL or a NUL-terminated string, read only during
        //   this call (the contract).
        let app_id = unsafe { str_arg(app_id, "app_id") }?;
        let mut options = InstanceOptions::new();
        if argv.is_null() {
            if argc != 0 {
                return Err(Error::invalid(format!("argv is NULL with argc {argc}")));
            }
            // This process's own arguments: the options' default.
        } else {
            // SAFETY: `argv` is not NULL: `argc` strings (the contract).
            let args = unsafe { os_strings(argv, argc, "argv") }?;
            options = options.args(args);
        }
        if env_count > 0 {
            if env_names.is_null() {
                return Err(Error::invalid(format!("env_names is NULL with env_count {env_count}")));
            }
            // SAFETY: `env_names` is not NULL: `env_count` strings (the
            // contract).
            for name in unsafe { os_strings(env_names, env_count, "env_names") }? {
                options = options.forward_env(name);
            }
        }
        // SAFETY:
        // - `data` is NULL or points to `len` readable bytes, read only
        //   during this call (the contract).
        let data = unsafe { bytes_arg(data, len, "data") }?;
        // COPYDATA_INFINITE: a timeout too long to reach.
        let timeout = timeout_arg(timeout_ms).unwrap_or(Duration::MAX);
        let options = options.data(data).timeout(timeout);
        match SingleInstance::acquire(app_id, &options)? {
            SingleInstance::Primary(inner) => {
                *primary = Box::into_raw(Box::new(Instance { inner }));
            }
            SingleInstance::Secondary(secondary) => {
                if let Some(d) = data_out {
                    *d = buffer::to_c(secondary.data())?;
                }
                if let Some(n) = len_out {
                    *n = secondary.data().len();
                }
                if let Some(c) = code_out {
                    *c = secondary.code();
                }
            }
        }
        Ok(())
    })
}

/// Waits at most `timeout_ms` (`COPYDATA_INFINITE`: as long as it takes)
/// for the next launch, and stores it in `*out`; the secondary waits until
/// it is answered with `copydata_launch_answer` (up to its own timeout:
/// answer every launch). Fails with `COPYDATA_STATUS_TIMED_OUT` when none
/// came in time. Several threads may receive at once.
///
/// # Safety
///
/// `instance` is NULL or a live primary, not closed during the call; `out`
/// is NULL or points to storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_instance_recv(
    instance: *const Instance,
    timeout_ms: u32,
    out: *mut *mut Launch,
) -> Status {
    guard(|| {
        // SAFETY:
        // - `out` is NULL or valid storage (this function's contract).
        let out = unsafe { out_arg(out) }?;
        // SAFETY:
        // - `instance` is NULL or a live primary, open during the call (the
        //   contract); receiving takes it shared.
        let instance = unsafe { handle(instance, "instance") }?;
        let inner = match timeout_arg(timeout_ms) {
            None => instance.inner.recv()?,
            Some(t) => instance.inner.recv_timeout(t)?,
        };
        let args = inner.args().iter().map(|a| c_string(a)).collect();
        let cwd = inner.cwd().map(|p| c_string(p.as_os_str()));
        let env = inner.env().iter().map(|(k, v)| (c_string(k), c_string(v))).collect();
        *out = Box::into_raw(Box::new(Launch { inner, args, cwd, env }));
        Ok(())
    })
}

/// Gives up being the primary: the app id is free for the next launch.
/// A secondary whose launch this primary has received still waits for its
/// answer, which may be given after the close; the other secondaries see
/// the primary gone and hand their launch to the next primary (which may
/// be themselves). NULL does nothing.
///
/// # Safety
///
/// `instance` is NULL or a live primary that no other thread is using; it
/// must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_instance_close(instance: *mut Instance) {
    // SAFETY: `instance` is NULL or came from `Box::into_raw` in
    // `copydata_instance_acquire`, and is given back once, with no other
    // thread using it (this function's contract).
    unsafe { give_back(instance) }
}

/// How many arguments the launch forwarded; 0 for NULL.
///
/// # Safety
///
/// `launch` is NULL or a live launch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_argc(launch: *const Launch) -> usize {
    guard_value(0, || {
        // SAFETY:
        // - `launch` is NULL or a live launch (this function's contract).
        unsafe { handle(launch, "launch") }.map_or(0, |l| l.args.len())
    })
}

/// Argument `index` (from 0) of the launch as the secondary had it: its
/// bytes on Linux, UTF-8 on Windows (where what is not valid UTF-16 is
/// replaced), cut at a NUL byte if one was in it (a Rust secondary may send
/// one); NULL for an index out of range or a NULL launch. Valid until the
/// launch is answered.
///
/// # Safety
///
/// `launch` is NULL or a live launch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_arg(launch: *const Launch, index: usize) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY:
        // - `launch` is NULL or a live launch (this function's contract).
        unsafe { handle(launch, "launch") }
            .ok()
            .and_then(|l| l.args.get(index))
            .map_or(std::ptr::null(), |a| a.as_ptr())
    })
}

/// The secondary's working directory (bytes on Linux; UTF-8 on Windows),
/// NULL if it sent none or for a NULL launch. Valid until the launch is
/// answered.
///
/// # Safety
///
/// `launch` is NULL or a live launch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_cwd(launch: *const Launch) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY:
        // - `launch` is NULL or a live launch (this function's contract).
        unsafe { handle(launch, "launch") }.ok().and_then(|l| l.cwd.as_ref()).map_or(std::ptr::null(), |c| c.as_ptr())
    })
}

/// The value of the forwarded environment variable `name` (see
/// `copydata_instance_acquire_env`), NUL-terminated, valid until the launch
/// is answered; NULL for a variable not forwarded (unset in the secondary,
/// or not named), or NULL arguments.
///
/// # Safety
///
/// `launch` is NULL or a live launch; `name` is NULL or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_env(launch: *const Launch, name: *const c_char) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or a live launch (the contract).
        let Ok(launch) = (unsafe { handle(launch, "launch") }) else { return std::ptr::null() };
        if name.is_null() {
            return std::ptr::null();
        }
        // SAFETY: not NULL, so a NUL-terminated string (the contract).
        let name = unsafe { std::ffi::CStr::from_ptr(name) };
        launch.env.iter().find(|(k, _)| k.as_c_str() == name).map_or(std::ptr::null(), |(_, v)| v.as_ptr())
    })
}

/// How many environment variables the launch forwarded; 0 for NULL.
///
/// # Safety
///
/// `launch` is NULL or a live launch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_env_count(launch: *const Launch) -> usize {
    guard_value(0, || {
        // SAFETY: NULL or a live launch (the contract).
        unsafe { handle(launch, "launch") }.map_or(0, |l| l.env.len())
    })
}

/// The name of the `index`th forwarded variable, in the secondary's order
/// (its value: `copydata_launch_env`); NULL for NULL or an index out of
/// range. Valid until the launch is answered.
///
/// # Safety
///
/// `launch` is NULL or a live launch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_env_name(launch: *const Launch, index: usize) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or a live launch (the contract).
        let entry = unsafe { handle(launch, "launch") }.ok().and_then(|l| l.env.get(index));
        entry.map_or(std::ptr::null(), |(k, _)| k.as_ptr())
    })
}

/// The bytes sent with the launch: their address (NULL when none), with
/// their count in `*len` (if `len` is not NULL). Valid until the launch is
/// answered.
///
/// # Safety
///
/// `launch` is NULL or a live launch; `len` is NULL or points to writable
/// storage for a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_data(launch: *const Launch, len: *mut usize) -> *const c_void {
    guard_value(std::ptr::null(), || {
        // SAFETY:
        // - `launch` is NULL or a live launch (this function's contract).
        let bytes = unsafe { handle(launch, "launch") }.map_or(&[][..], |l| l.inner.data());
        // SAFETY:
        // - `len` is NULL or writable storage for a `usize` (the contract).
        if let Some(n) = unsafe { len.as_mut() } {
            *n = bytes.len();
        }
        if bytes.is_empty() { std::ptr::null() } else { bytes.as_ptr().cast() }
    })
}

/// The message tag: `COPYDATA_LAUNCH_TAG` for a launch of
/// `copydata_instance_acquire` (or of any copydata program), anything else
/// for a plain Win32 program's `WM_COPYDATA` to the primary's window,
/// whose bytes are the launch's data (it has no arguments and no working
/// directory); 0 for NULL.
///
/// # Safety
///
/// `launch` is NULL or a live launch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_tag(launch: *const Launch) -> u64 {
    guard_value(0, || {
        // SAFETY:
        // - `launch` is NULL or a live launch (this function's contract).
        unsafe { handle(launch, "launch") }.map_or(0, |l| l.inner.tag())
    })
}

/// The tag of a launch made by copydata (`copydata_launch_tag`).
pub const COPYDATA_LAUNCH_TAG: u64 = 0x48_43_4e_55_41_4c_44_43;

/// The secondary's process id (from the OS, not from the launch); 0 for
/// NULL.
///
/// # Safety
///
/// `launch` is NULL or a live launch.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_pid(launch: *const Launch) -> u32 {
    guard_value(0, || {
        // SAFETY:
        // - `launch` is NULL or a live launch (this function's contract).
        unsafe { handle(launch, "launch") }.map_or(0, |l| l.inner.pid())
    })
}

/// Answers the launch with `code` (the secondary's exit code) and `len`
/// bytes at `data` (NULL and 0 for none), and frees it: `launch` must not
/// be used afterwards, whatever the result. Fails with
/// `COPYDATA_STATUS_SENDER_GONE` when the secondary stopped waiting, and
/// with `COPYDATA_STATUS_INVALID_ARGUMENT` for NULL `data` with a length
/// (the launch is then answered with `code` alone).
///
/// # Safety
///
/// `launch` is NULL or a live launch, not used afterwards; `data` is NULL
/// or points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn copydata_launch_answer(
    launch: *mut Launch,
    code: i32,
    data: *const c_void,
    len: usize,
) -> Status {
    guard(|| {
        if launch.is_null() {
            return Err(Error::invalid("launch is NULL"));
        }
        // SAFETY:
        // - `launch` came from `Box::into_raw` in `copydata_instance_recv`
        //   and is given back once (this function's contract). Taken before
        //   anything can fail, so it is freed (answered with code 0) on
        //   every path.
        let launch = unsafe { Box::from_raw(launch) };
        // SAFETY:
        // - `data` is NULL or points to `len` readable bytes, read only
        //   during this call (the contract).
        match unsafe { bytes_arg(data, len, "data") } {
            Ok(data) => Ok(launch.inner.answer(Answer::new(code, data))?),
            Err(e) => {
                // The code still goes, rather than the 0 of a launch dropped.
                let _ = launch.inner.answer(Answer::code(code));
                Err(e)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copydata_free;
    use crate::mailbox::COPYDATA_INFINITE;
    use crate::test_util::{last, unique};
    use std::ptr::{null, null_mut};

    #[test]
    fn bad_environment_names_are_refused_before_anything_is_sent() {
        let app = unique("app-env");
        let mut primary = null_mut();
        let holes = [c"PATH".as_ptr(), null()];
        // SAFETY: valid strings and out storage; the calls fail before
        // they acquire anything.
        unsafe {
            let none = null_mut();
            let st = copydata_instance_acquire_env(
                app.as_ptr(),
                0,
                null(),
                1,
                null(),
                null(),
                0,
                0,
                &mut primary,
                none,
                null_mut(),
                none.cast(),
            );
            assert_eq!(st, Status::InvalidArgument);
            assert!(last().contains("env_names is NULL"), "{}", last());
            let st = copydata_instance_acquire_env(
                app.as_ptr(),
                0,
                null(),
                2,
                holes.as_ptr(),
                null(),
                0,
                0,
                &mut primary,
                none,
                null_mut(),
                none.cast(),
            );
            assert_eq!(st, Status::InvalidArgument);
            assert!(last().contains("env_names[1] is NULL"), "{}", last());
            assert!(primary.is_null());
        }
    }

    /// One thread is the primary; this one launches again with arguments
    /// and bytes, and gets the primary's answer.
    #[test]
    fn a_second_launch_is_forwarded_and_answered() {
        let app = unique("app");
        let seed = std::ptr::dangling_mut();
        let (mut primary, mut code, mut data, mut len) = (null_mut(), -1i32, seed, 9usize);
        // SAFETY:
        // - valid strings and out storage; the primary is used by one
        //   thread at a time and closed once; launches are answered once;
        //   answer buffers are freed once.
        unsafe {
            let status = copydata_instance_acquire(
                app.as_ptr(),
                0,
                null(),
                null(),
                0,
                5000,
                &mut primary,
                &mut code,
                &mut data,
                &mut len,
            );
            assert_eq!(status, Status::Ok, "{}", last());
            assert!(!primary.is_null());
            assert_eq!((code, data.is_null(), len), (0, true, 0));

            let shared = primary as usize;
            let server = std::thread::spawn(move || {
                let primary = shared as *const Instance;
                let mut launch = null_mut();
                assert_eq!(copydata_instance_recv(primary, 10_000, &mut launch), Status::Ok, "{}", last());
                let args: Vec<String> = (0..copydata_launch_argc(launch))
                    .map(|i| std::ffi::CStr::from_ptr(copydata_launch_arg(launch, i)).to_string_lossy().into_owned())
                    .collect();
                assert!(copydata_launch_arg(launch, 2).is_null());
                let cwd = std::ffi::CStr::from_ptr(copydata_launch_cwd(launch)).to_string_lossy().into_owned();
                let mut n = 0;
                let bytes = std::slice::from_raw_parts(copydata_launch_data(launch, &mut n).cast::<u8>(), n).to_vec();
                let pid = copydata_launch_pid(launch);
                // PATH was forwarded; the unset variable was not.
                assert_eq!(copydata_launch_env_count(launch), 1);
                let name = std::ffi::CStr::from_ptr(copydata_launch_env_name(launch, 0));
                assert_eq!(name.to_str().unwrap(), "PATH");
                assert!(copydata_launch_env_name(launch, 1).is_null());
                let path = std::ffi::CStr::from_ptr(copydata_launch_env(launch, c"PATH".as_ptr()));
                assert_eq!(path.to_str().ok(), std::env::var("PATH").ok().as_deref());
                assert!(copydata_launch_env(launch, c"COPYDATA_TEST_SURELY_UNSET".as_ptr()).is_null());
                assert!(copydata_launch_env(launch, null()).is_null());
                assert!(copydata_launch_env(null(), c"PATH".as_ptr()).is_null());
                assert_eq!(copydata_launch_env_count(null()), 0);
                assert_eq!(copydata_launch_tag(launch), COPYDATA_LAUNCH_TAG);
                assert_eq!(copydata_launch_answer(launch, 7, c"opened".as_ptr().cast(), 6), Status::Ok);
                // A launch of this process's own arguments, no bytes; bad
                // answer bytes still send the code.
                assert_eq!(copydata_instance_recv(primary, 10_000, &mut launch), Status::Ok, "{}", last());
                let own: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                assert_eq!(copydata_launch_argc(launch), own.len());
                let mut n = 5;
                assert!(copydata_launch_data(launch, &mut n).is_null());
                assert_eq!(n, 0);
                assert_eq!(copydata_launch_answer(launch, 8, null(), 3), Status::InvalidArgument);
                // Nothing more within a short wait.
                let mut none = null_mut();
                assert_eq!(copydata_instance_recv(primary, 50, &mut none), Status::TimedOut);
                assert!(none.is_null());
                (args, cwd, bytes, pid)
            });

            let argv = [c"file one.txt".as_ptr(), c"--line=3".as_ptr()];
            let env = [c"PATH".as_ptr(), c"COPYDATA_TEST_SURELY_UNSET".as_ptr()];
            let (mut secondary, mut code, mut data, mut len) = (std::ptr::dangling_mut(), -1i32, seed, 0usize);
            let status = copydata_instance_acquire_env(
                app.as_ptr(),
                argv.len(),
                argv.as_ptr(),
                env.len(),
                env.as_ptr(),
                c"xyz".as_ptr().cast(),
                3,
                COPYDATA_INFINITE,
                &mut secondary,
                &mut code,
                &mut data,
                &mut len,
            );
            assert_eq!(status, Status::Ok, "{}", last());
            assert!(secondary.is_null(), "a second primary");
            assert_eq!((code, std::slice::from_raw_parts(data.cast::<u8>(), len)), (7, &b"opened"[..]));
            copydata_free(data);
            // This process's own arguments; only the code wanted back.
            let status = copydata_instance_acquire(
                app.as_ptr(),
                0,
                null(),
                null(),
                0,
                10_000,
                &mut secondary,
                &mut code,
                null_mut(),
                null_mut(),
            );
            assert_eq!((status, secondary.is_null(), code), (Status::Ok, true, 8), "{}", last());
            let (args, cwd, bytes, pid) = server.join().unwrap();
            assert_eq!(args, ["file one.txt", "--line=3"]);
            assert_eq!(std::path::Path::new(&cwd), std::env::current_dir().unwrap());
            assert_eq!((bytes.as_slice(), pid), (&b"xyz"[..], std::process::id()));
            copydata_instance_close(primary);
        }
    }

    #[test]
    fn the_launch_tag_is_the_librarys() {
        assert_eq!(COPYDATA_LAUNCH_TAG, copydata::instance::LAUNCH_TAG);
    }

    #[test]
    fn bad_launches_are_refused() {
        let mut primary = null_mut();
        let app = unique("bad");
        // SAFETY:
        // - valid or NULL strings and out storage; nothing is made.
        unsafe {
            let acquire = |app: *const c_char, argc, argv: *const *const c_char, primary: &mut *mut Instance| {
                copydata_instance_acquire(app, argc, argv, null(), 0, 1000, primary, null_mut(), null_mut(), null_mut())
            };
            assert_eq!(acquire(c"not a name!".as_ptr(), 0, null(), &mut primary), Status::InvalidArgument);
            assert_eq!(acquire(null(), 0, null(), &mut primary), Status::InvalidArgument);
            assert_eq!(acquire(app.as_ptr(), 1, null(), &mut primary), Status::InvalidArgument);
            assert_eq!(acquire(app.as_ptr(), usize::MAX, [null()].as_ptr(), &mut primary), Status::InvalidArgument);
            assert_eq!(acquire(app.as_ptr(), 1, [null()].as_ptr(), &mut primary), Status::InvalidArgument);
            assert!(last().contains("argv[0]"), "{}", last());
            assert!(primary.is_null());
            let mut launch = null_mut();
            assert_eq!(copydata_instance_recv(null(), 0, &mut launch), Status::InvalidArgument);
            assert_eq!(copydata_launch_answer(null_mut(), 0, null(), 0), Status::InvalidArgument);
            assert_eq!((copydata_launch_argc(null()), copydata_launch_pid(null())), (0, 0));
            assert!(copydata_launch_arg(null(), 0).is_null() && copydata_launch_cwd(null()).is_null());
            let mut n = 5;
            assert!(copydata_launch_data(null(), &mut n).is_null());
            assert_eq!(n, 0);
            copydata_instance_close(null_mut());
        }
    }
}
