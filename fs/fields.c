/* /fields: placeholder until its issue lands; refuses writes (EOPNOTSUPP). */
#include "fs/fs.h"

const struct folder_ops fields_folder = {
	.name = "fields",
};
