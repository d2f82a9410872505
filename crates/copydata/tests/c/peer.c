/*
 * A plain Win32 program, built with mingw, that speaks WM_COPYDATA the
 * classic way, for the interoperability tests:
 *
 *   peer send CLASS TAG TEXT   find the message-only window of CLASS and send
 *                              it TEXT with dwData = TAG; print "lresult N"
 *   peer post CLASS MSG        post message number MSG (and WM_QUIT) to the
 *                              window of CLASS; print "posted"
 *   peer inject CLASS TEXT     send TEXT by WM_COPYDATA to every message-only
 *                              window of CLASS (naming its own window in
 *                              wParam); print "injected N"
 *   peer send-hung CLASS TEXT  send TEXT to the window of CLASS from a second
 *                              thread, naming in wParam a window whose thread
 *                              never handles messages; print "lresult N"
 *   peer serve CLASS [MS]      make a message-only window of CLASS; answer each
 *                              WM_COPYDATA with LRESULT 1000 + dwData and a
 *                              WM_COPYDATA back to the sender's window saying
 *                              "C got N bytes" (dwData 0x43444132: its own
 *                              bytes back); dwData 999 ends it
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static wchar_t *widen(const char *s)
{
    int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
    wchar_t *w = malloc(n * sizeof(wchar_t));
    MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n);
    return w;
}

static DWORD serve_delay_ms;

static LRESULT CALLBACK serve_proc(HWND hwnd, UINT msg, WPARAM wp, LPARAM lp)
{
    if (msg == WM_COPYDATA) {
        if (serve_delay_ms)
            Sleep(serve_delay_ms);
        COPYDATASTRUCT *in = (COPYDATASTRUCT *)lp;
        char text[64];
        COPYDATASTRUCT out;
        if (in->dwData == 999) {
            PostQuitMessage(0);
            return 1;
        }
        snprintf(text, sizeof text, "C got %lu bytes", (unsigned long)in->cbData);
        out.dwData = in->dwData;
        out.cbData = (DWORD)strlen(text);
        out.lpData = text;
        if (in->dwData == 0x43444132) {
            out.cbData = in->cbData;
            out.lpData = in->lpData;
        }
        if (wp)
            SendMessageTimeoutW((HWND)wp, WM_COPYDATA, (WPARAM)hwnd, (LPARAM)&out, SMTO_NORMAL, 5000, NULL);
        return 1000 + (LRESULT)in->dwData;
    }
    return DefWindowProcW(hwnd, msg, wp, lp);
}

static HWND window(const wchar_t *cls, WNDPROC proc)
{
    WNDCLASSEXW wc;
    memset(&wc, 0, sizeof wc);
    wc.cbSize = sizeof wc;
    wc.lpfnWndProc = proc;
    wc.hInstance = GetModuleHandleW(NULL);
    wc.lpszClassName = cls;
    RegisterClassExW(&wc);
    return CreateWindowExW(0, cls, cls, 0, 0, 0, 0, 0, HWND_MESSAGE, NULL, wc.hInstance, NULL);
}

struct hung_send {
    HWND to, from;
    const char *text;
    LRESULT result;
    BOOL ok;
};

static DWORD WINAPI hung_sender(LPVOID arg)
{
    struct hung_send *h = arg;
    COPYDATASTRUCT cds;
    DWORD_PTR result = 0;
    cds.dwData = 1;
    cds.cbData = (DWORD)strlen(h->text);
    cds.lpData = (void *)h->text;
    h->ok = SendMessageTimeoutW(h->to, WM_COPYDATA, (WPARAM)h->from, (LPARAM)&cds, SMTO_NORMAL, 30000, &result) != 0;
    h->result = (LRESULT)result;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "send") == 0) {
        HWND me = window(L"CopydataCPeerSender", DefWindowProcW);
        HWND to = FindWindowExW(HWND_MESSAGE, NULL, widen(argv[2]), NULL);
        COPYDATASTRUCT cds;
        DWORD_PTR result = 0;
        if (!to) {
            printf("no window\n");
            return 3;
        }
        cds.dwData = (ULONG_PTR)_strtoui64(argv[3], NULL, 10);
        cds.cbData = (DWORD)strlen(argv[4]);
        cds.lpData = argv[4];
        if (!SendMessageTimeoutW(to, WM_COPYDATA, (WPARAM)me, (LPARAM)&cds, SMTO_NORMAL, 30000, &result)) {
            printf("send failed %lu\n", GetLastError());
            return 4;
        }
        printf("lresult %lld\n", (long long)result);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "post") == 0) {
        HWND to = FindWindowExW(HWND_MESSAGE, NULL, widen(argv[2]), NULL);
        if (!to) {
            printf("no window\n");
            return 3;
        }
        if (!PostMessageW(to, (UINT)strtoul(argv[3], NULL, 10), 0, 0) || !PostMessageW(to, WM_QUIT, 0, 0)) {
            printf("post failed %lu\n", GetLastError());
            return 4;
        }
        printf("posted\n");
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "inject") == 0) {
        HWND me = window(L"CopydataCPeerInjector", DefWindowProcW);
        HWND to = NULL;
        int n = 0;
        COPYDATASTRUCT cds;
        cds.dwData = 0;
        cds.cbData = (DWORD)strlen(argv[3]);
        cds.lpData = argv[3];
        while ((to = FindWindowExW(HWND_MESSAGE, to, widen(argv[2]), NULL)) != NULL) {
            SendMessageTimeoutW(to, WM_COPYDATA, (WPARAM)me, (LPARAM)&cds, SMTO_NORMAL, 2000, NULL);
            n++;
        }
        printf("injected %d\n", n);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "send-hung") == 0) {
        /* This thread owns the reply window and never handles its messages
           while the other thread sends. */
        struct hung_send h;
        HANDLE t;
        h.from = window(L"CopydataCPeerHung", DefWindowProcW);
        h.to = FindWindowExW(HWND_MESSAGE, NULL, widen(argv[2]), NULL);
        h.text = argv[3];
        if (!h.to) {
            printf("no window\n");
            return 3;
        }
        t = CreateThread(NULL, 0, hung_sender, &h, 0, NULL);
        WaitForSingleObject(t, INFINITE);
        if (!h.ok) {
            printf("send failed %lu\n", GetLastError());
            return 4;
        }
        printf("lresult %lld\n", (long long)h.result);
        return 0;
    }
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "serve") == 0) {
        MSG msg;
        if (argc == 4)
            serve_delay_ms = (DWORD)strtoul(argv[3], NULL, 10);
        if (!window(widen(argv[2]), serve_proc))
            return 1;
        printf("ready\n");
        fflush(stdout);
        while (GetMessageW(&msg, NULL, 0, 0) > 0)
            DispatchMessageW(&msg);
        return 0;
    }
    fprintf(stderr, "usage: peer send CLASS TAG TEXT | peer post CLASS MSG | peer inject CLASS TEXT | peer send-hung CLASS TEXT | peer serve CLASS [MS]\n");
    return 2;
}
