//! Sends `WM_COPYDATA` to a plain Win32 window, one that knows nothing of
//! copydata (Windows only).
//!
//! ```text
//! cargo run -p copydata --example win32_window
//! ```
//!
//! The parent starts a child (itself again, in the `window` role) that makes
//! an ordinary message-only window with a window procedure, as any Win32
//! program would. The parent finds it by class name and sends it a message;
//! the window answers with an `LRESULT` and sends bytes back.

#[cfg(not(windows))]
fn main() {
    println!("win32_window: a plain Win32 window is Windows only");
}

#[cfg(windows)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::BufRead;
    use std::time::Duration;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, class] = &args[..]
        && role == "window"
    {
        return window::run(class);
    }
    let class = format!("CopydataExampleWindow{}", std::process::id());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["window", &class])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut ready)?;
    // FindWindowW(class), then SendMessageTimeoutW(WM_COPYDATA) naming a
    // window of ours in wParam, which collects the bytes sent back.
    let sent = copydata::os::windows::send_to_window(Some(&class), None, 7, b"hello, window", Duration::from_secs(5));
    let reply = sent.inspect_err(|_| drop(child.kill()))?;
    println!("reply {} {:?}", reply.code, String::from_utf8_lossy(&reply.data));
    child.wait()?;
    Ok(())
}

#[cfg(windows)]
mod window {
    use std::ptr::{null, null_mut};
    use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
    use windows_sys::Win32::System::{DataExchange::COPYDATASTRUCT, LibraryLoader::GetModuleHandleW};
    use windows_sys::Win32::UI::WindowsAndMessaging::*;

    unsafe extern "system" fn wndproc(hwnd: HWND, msg: u32, wp: WPARAM, lp: LPARAM) -> LRESULT {
        if msg != WM_COPYDATA {
            // SAFETY: the arguments are those Windows passed in.
            return unsafe { DefWindowProcW(hwnd, msg, wp, lp) };
        }
        // SAFETY:
        // - for WM_COPYDATA, lParam points at a COPYDATASTRUCT, and lpData at
        //   cbData bytes, both valid until this call returns;
        // - a null lpData comes only with cbData = 0, which is not read.
        let (cds, data) = unsafe {
            let cds = &*(lp as *const COPYDATASTRUCT);
            (
                cds,
                if cds.cbData == 0 { &[][..] } else { std::slice::from_raw_parts(cds.lpData.cast(), cds.cbData as _) },
            )
        };
        let mut back = data.to_ascii_uppercase();
        let out = COPYDATASTRUCT { dwData: cds.dwData, cbData: back.len() as u32, lpData: back.as_mut_ptr().cast() };
        // SAFETY:
        // - `out` and `back` outlive the call; a stale wParam only fails it;
        // - PostQuitMessage takes an exit code: one message, then quit.
        unsafe {
            let to = wp as HWND; // by convention, the sender's window
            SendMessageTimeoutW(to, WM_COPYDATA, hwnd as _, &raw const out as _, SMTO_NORMAL, 5000, null_mut());
            PostQuitMessage(0);
        }
        1 // TRUE: handled
    }

    pub fn run(class: &str) -> Result<(), Box<dyn std::error::Error>> {
        let class: Vec<u16> = class.encode_utf16().chain([0]).collect();
        // SAFETY: a null name asks for this program's module; nothing is freed.
        let instance = unsafe { GetModuleHandleW(null()) };
        let wc = WNDCLASSW {
            lpfnWndProc: Some(wndproc),
            hInstance: instance,
            lpszClassName: class.as_ptr(),
            ..Default::default()
        };
        // SAFETY: `wc` and the class name it points at outlive the calls.
        let hwnd = unsafe {
            RegisterClassW(&wc);
            CreateWindowExW(0, wc.lpszClassName, null(), 0, 0, 0, 0, 0, HWND_MESSAGE, null_mut(), instance, null())
        };
        if hwnd.is_null() {
            return Err(std::io::Error::last_os_error().into());
        }
        println!("ready");
        let mut msg = MSG::default();
        // SAFETY: `msg` is a valid MSG for GetMessageW to fill and DispatchMessageW to read.
        while unsafe { GetMessageW(&mut msg, null_mut(), 0, 0) } > 0 {
            // SAFETY: as above.
            unsafe { DispatchMessageW(&msg) };
        }
        Ok(())
    }
}
