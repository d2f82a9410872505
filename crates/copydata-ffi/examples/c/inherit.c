/*
 * Handing sections to a child process, from C: the Win32 way (an
 * inheritable handle and its value in the environment) on Windows and
 * Linux alike.
 *
 *     inherit            the parent: makes a section, writes into it, and
 *                        starts itself as "inherit child" with that section
 *                        and a read-only hand-out of a second one; then
 *                        reads back what the child wrote
 *     inherit child      the child: takes its sections, prints each
 *                        ("child: section I SIZE rw|ro TEXT"), writes
 *                        "written by child PID" into the writable ones and
 *                        checks that the read-only ones refuse writing
 *
 * The parent prints "parent: passed N", then "parent: read back TEXT" and
 * "parent: kept TEXT" (the read-only section, unchanged), and exits 0 if
 * the child did. A Rust parent can start "inherit child" too
 * (copydata::CommandExt::spawn_with_sections).
 */
#ifndef _WIN32
#define _POSIX_C_SOURCE 200809L /* setenv, fork */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "copydata.h"

static int fail(const char *what, copydata_status st)
{
    fprintf(stderr, "inherit: %s: %s (%s)\n", what, copydata_last_error(), copydata_status_name(st));
    return 1;
}

static unsigned long my_pid(void)
{
#ifdef _WIN32
    return (unsigned long)GetCurrentProcessId();
#else
    return (unsigned long)getpid();
#endif
}

/* Writes `text` (and its NUL) at the start of `section`. */
static copydata_status put(copydata_section *section, const char *text)
{
    copydata_view *view;
    copydata_status st = copydata_section_map(section, 0, strlen(text) + 1, COPYDATA_READ_WRITE, &view);
    if (st)
        return st;
    memcpy(copydata_view_data(view), text, strlen(text) + 1);
    copydata_view_unmap(view);
    return COPYDATA_STATUS_OK;
}

/* Copies the text at the start of `section` into `out` (at most 63 bytes). */
static copydata_status get(const copydata_section *section, char out[64])
{
    copydata_view *view;
    copydata_status st = copydata_section_map(section, 0, 64, COPYDATA_READ_ONLY, &view);
    if (st)
        return st;
    /* The bytes may change while they are read: copy, then terminate. */
    memcpy(out, copydata_view_data(view), 63);
    out[63] = 0;
    copydata_view_unmap(view);
    return COPYDATA_STATUS_OK;
}

static int child(void)
{
    copydata_section **sections;
    size_t count;
    copydata_status st = copydata_inherited_sections(&sections, &count);
    if (st)
        return fail("taking the inherited sections", st);
    int rc = 0;
    for (size_t i = 0; i < count; i++) {
        copydata_section *s = sections[i];
        char text[64];
        if ((st = get(s, text))) {
            rc = fail("reading a section", st);
            continue;
        }
        int writable = copydata_section_access(s) == COPYDATA_READ_WRITE;
        printf("child: section %u %llu %s %s\n", (unsigned)i, (unsigned long long)copydata_section_size(s),
               writable ? "rw" : "ro", text);
        if (writable) {
            char mine[64];
            snprintf(mine, sizeof mine, "written by child %lu", my_pid());
            if ((st = put(s, mine)))
                rc = fail("writing a section", st);
        } else {
            copydata_view *view;
            st = copydata_section_map(s, 0, 1, COPYDATA_READ_WRITE, &view);
            if (st != COPYDATA_STATUS_PERMISSION_DENIED) {
                fprintf(stderr, "inherit: a read-only section mapped for writing gave %s\n", copydata_status_name(st));
                copydata_view_unmap(view);
                rc = 1;
            }
        }
        copydata_section_close(s);
    }
    copydata_free(sections);
    /* Taken once: a second call says so. */
    if (copydata_inherited_sections(&sections, &count) != COPYDATA_STATUS_CLOSED) {
        fprintf(stderr, "inherit: the sections were taken twice\n");
        rc = 1;
    }
    fflush(stdout);
    return rc;
}

/* Starts this program as "inherit child" with the inheritance's handles
 * and token, and waits for it; returns its exit code, or -1. */
static int run_child(const char *self, const copydata_inheritance *passed)
{
    size_t n = copydata_inheritance_count(passed);
#ifdef _WIN32
    (void)self;
    /* The child inherits exactly these handles (a handle list) and finds
     * them through the environment, which it inherits. */
    HANDLE handles[8];
    if (n > 8)
        return -1;
    for (size_t i = 0; i < n; i++)
        handles[i] = (HANDLE)copydata_inheritance_handle(passed, i);
    if (!SetEnvironmentVariableA(COPYDATA_INHERIT_VAR, copydata_inheritance_token(passed)))
        return -1;
    SIZE_T size = 0;
    InitializeProcThreadAttributeList(NULL, 1, 0, &size);
    LPPROC_THREAD_ATTRIBUTE_LIST attrs = malloc(size);
    if (!attrs || !InitializeProcThreadAttributeList(attrs, 1, 0, &size)) {
        free(attrs);
        return -1;
    }
    int code = -1;
    STARTUPINFOEXW info;
    memset(&info, 0, sizeof info);
    info.StartupInfo.cb = sizeof info;
    info.lpAttributeList = attrs;
    wchar_t exe[MAX_PATH], cmdline[MAX_PATH + 16];
    PROCESS_INFORMATION pi;
    DWORD got = GetModuleFileNameW(NULL, exe, MAX_PATH);
    if (got && got < MAX_PATH &&
        UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, handles, n * sizeof(HANDLE), NULL,
                                  NULL)) {
        _snwprintf(cmdline, MAX_PATH + 16, L"\"%ls\" child", exe);
        cmdline[MAX_PATH + 15] = 0;
        if (CreateProcessW(exe, cmdline, NULL, NULL, TRUE, EXTENDED_STARTUPINFO_PRESENT, NULL, NULL,
                           &info.StartupInfo, &pi)) {
            DWORD status;
            if (WaitForSingleObject(pi.hProcess, 60000) == WAIT_OBJECT_0 && GetExitCodeProcess(pi.hProcess, &status))
                code = (int)status;
            CloseHandle(pi.hThread);
            CloseHandle(pi.hProcess);
        }
    }
    DeleteProcThreadAttributeList(attrs);
    free(attrs);
    SetEnvironmentVariableA(COPYDATA_INHERIT_VAR, NULL);
    return code;
#else
    /* The descriptors are close-on-exec here: the child clears the flag
     * between fork and exec (only async-signal-safe calls there), so only
     * this child gets them. It finds them through the environment. */
    int fds[8];
    if (n > 8)
        return -1;
    for (size_t i = 0; i < n; i++)
        fds[i] = (int)copydata_inheritance_handle(passed, i);
    if (setenv(COPYDATA_INHERIT_VAR, copydata_inheritance_token(passed), 1) == -1)
        return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        for (size_t i = 0; i < n; i++)
            if (fcntl(fds[i], F_SETFD, 0) == -1)
                _exit(127);
        execl(self, self, "child", (char *)NULL);
        _exit(127);
    }
    unsetenv(COPYDATA_INHERIT_VAR);
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
#endif
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "child") == 0)
        return child();
    if (argc != 1) {
        fprintf(stderr, "usage: inherit [child]\n");
        return 2;
    }
    copydata_section *shared, *secret, *frozen;
    copydata_status st;
    if ((st = copydata_section_anonymous(4096, &shared)))
        return fail("making a section", st);
    if ((st = copydata_section_anonymous(8192, &secret)) || (st = copydata_section_read_only(secret, &frozen)))
        return fail("making a read-only hand-out", st);
    if ((st = put(shared, "hello from the parent")) || (st = put(secret, "only for reading")))
        return fail("writing", st);
    const copydata_section *pass[2] = {shared, frozen};
    copydata_inheritance *passed;
    if ((st = copydata_inheritance_new(pass, 2, &passed)))
        return fail("making the sections ready for a child", st);
    printf("parent: passed %u\n", (unsigned)copydata_inheritance_count(passed));
    int code = run_child(argv[0], passed);
    copydata_inheritance_close(passed);
    char text[64];
    if ((st = get(shared, text)))
        return fail("reading back", st);
    printf("parent: read back %s\n", text);
    if ((st = get(secret, text)))
        return fail("reading back", st);
    printf("parent: kept %s\n", text);
    copydata_section_close(frozen);
    copydata_section_close(secret);
    copydata_section_close(shared);
    if (code != 0) {
        fprintf(stderr, "inherit: the child exited with %d\n", code);
        return 1;
    }
    return 0;
}
