/* /history: placeholder until its issue lands; refuses writes (EOPNOTSUPP). */
#include "fs/fs.h"

const struct folder_ops history_folder = {
	.name = "history",
};
