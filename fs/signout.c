/* /sign-out: placeholder until its issue lands; refuses writes (EOPNOTSUPP). */
#include "fs/fs.h"

const struct folder_ops signout_folder = {
	.name = "sign-out",
};
