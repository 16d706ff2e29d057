/* p11shim: a PKCS#11 module for tests that forwards to a real module
 * ($P11SHIM_REAL, e.g. SoftHSM) and injects what SoftHSM cannot do:
 * token PIN flags (locked, final try), failing operations (device error)
 * and a removed token. Controlled by files in $P11SHIM_CTL:
 *   flags     hex value OR-ed into CK_TOKEN_INFO.flags
 *   fail_ops  present: C_SignInit/C_DecryptInit fail with CKR_DEVICE_ERROR
 *   removed   present: slot list empty, session/token calls fail with
 *             CKR_DEVICE_REMOVED / CKR_TOKEN_NOT_PRESENT
 *   logins    one line appended per C_Login call (to prove none happened) */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST shim;
static CK_FUNCTION_LIST_PTR real;

static int
ctl_exists(const char *name)
{
	char path[4096];
	const char *dir = getenv("P11SHIM_CTL");
	if (dir == NULL)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

static unsigned long
ctl_flags(void)
{
	char path[4096];
	const char *dir = getenv("P11SHIM_CTL");
	unsigned long v = 0;
	FILE *f;
	if (dir == NULL)
		return 0;
	snprintf(path, sizeof(path), "%s/flags", dir);
	if ((f = fopen(path, "r")) != NULL) {
		if (fscanf(f, "%lx", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v;
}

static CK_RV
shim_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	if (present && ctl_exists("removed")) {
		*count = 0;
		return CKR_OK;
	}
	return real->C_GetSlotList(present, list, count);
}

static CK_RV
shim_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	CK_RV rv;
	if (ctl_exists("removed"))
		return CKR_TOKEN_NOT_PRESENT;
	if ((rv = real->C_GetTokenInfo(slot, info)) == CKR_OK)
		info->flags |= ctl_flags();
	return rv;
}

static CK_RV
shim_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app,
    CK_NOTIFY notify, CK_SESSION_HANDLE_PTR h)
{
	if (ctl_exists("removed"))
		return CKR_TOKEN_NOT_PRESENT;
	return real->C_OpenSession(slot, flags, app, notify, h);
}

static CK_RV
shim_Login(CK_SESSION_HANDLE h, CK_USER_TYPE type, CK_UTF8CHAR_PTR pin,
    CK_ULONG len)
{
	char path[4096];
	const char *dir = getenv("P11SHIM_CTL");
	FILE *f;
	if (dir != NULL) {
		snprintf(path, sizeof(path), "%s/logins", dir);
		if ((f = fopen(path, "a")) != NULL) {
			fputs("login\n", f);
			fclose(f);
		}
	}
	if (ctl_exists("removed"))
		return CKR_DEVICE_REMOVED;
	return real->C_Login(h, type, pin, len);
}

static CK_RV
shim_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	if (ctl_exists("removed"))
		return CKR_DEVICE_REMOVED;
	if (ctl_exists("fail_ops"))
		return CKR_DEVICE_ERROR;
	return real->C_SignInit(h, m, k);
}

static CK_RV
shim_DecryptInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
	if (ctl_exists("removed"))
		return CKR_DEVICE_REMOVED;
	if (ctl_exists("fail_ops"))
		return CKR_DEVICE_ERROR;
	return real->C_DecryptInit(h, m, k);
}

CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	const char *path = getenv("P11SHIM_REAL");
	CK_C_GetFunctionList getfl;
	void *dl;
	CK_RV rv;

	if (real == NULL) {
		if (path == NULL || (dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL ||
		    (getfl = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL)
			return CKR_GENERAL_ERROR;
		if ((rv = getfl(&real)) != CKR_OK)
			return rv;
		shim = *real;
		shim.C_GetFunctionList = C_GetFunctionList;
		shim.C_GetSlotList = shim_GetSlotList;
		shim.C_GetTokenInfo = shim_GetTokenInfo;
		shim.C_OpenSession = shim_OpenSession;
		shim.C_Login = shim_Login;
		shim.C_SignInit = shim_SignInit;
		shim.C_DecryptInit = shim_DecryptInit;
	}
	*out = &shim;
	return CKR_OK;
}
