/* Wine 8.0 lacks bcryptprimitives.dll, whose ProcessPrng every program built
 * by Rust >= 1.78 imports. This stand-in forwards to RtlGenRandom
 * (advapi32's SystemFunction036). Installed into the Wine prefix only. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
