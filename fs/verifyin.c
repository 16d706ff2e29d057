/* /verify-in: placeholder until its issue lands; refuses writes (EOPNOTSUPP). */
#include "fs/fs.h"

const struct folder_ops verifyin_folder = {
	.name = "verify-in",
};
