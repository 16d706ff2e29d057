// The ways a Java server writes and reads files, for tests/test_writers.py:
//   copy SRC DST     Files.copy(SRC, DST, REPLACE_EXISTING)
//   write SRC DST    Files.write(DST, bytes of SRC)
//   atomic SRC DST   createTempFile(DST's dir, ".", ".tmp") (created and
//                    closed empty), Files.copy(SRC, tmp, REPLACE_EXISTING),
//                    Files.move(tmp, DST, ATOMIC_MOVE, REPLACE_EXISTING)
//   append SRC DST   Files.write(DST, bytes of SRC, CREATE, APPEND)
//   jarfile JAR      new JarFile(JAR, true): read every entry, require a
//                    signer on each file entry; prints "verified N"
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.Enumeration;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;

public class Writers {
    public static void main(String[] a) throws Exception {
        switch (a[0]) {
        case "copy":
            Files.copy(Paths.get(a[1]), Paths.get(a[2]),
                StandardCopyOption.REPLACE_EXISTING);
            break;
        case "write":
            Files.write(Paths.get(a[2]), Files.readAllBytes(Paths.get(a[1])));
            break;
        case "atomic": {
            Path dst = Paths.get(a[2]);
            Path tmp = Files.createTempFile(dst.getParent(), ".", ".tmp");
            Files.copy(Paths.get(a[1]), tmp, StandardCopyOption.REPLACE_EXISTING);
            Files.move(tmp, dst, StandardCopyOption.ATOMIC_MOVE,
                StandardCopyOption.REPLACE_EXISTING);
            break;
        }
        case "append":
            Files.write(Paths.get(a[2]), Files.readAllBytes(Paths.get(a[1])),
                StandardOpenOption.CREATE, StandardOpenOption.APPEND);
            break;
        case "jarfile": {
            int n = 0;
            byte[] buf = new byte[8192];
            try (JarFile jf = new JarFile(a[1], true)) {
                for (Enumeration<JarEntry> e = jf.entries(); e.hasMoreElements();) {
                    JarEntry je = e.nextElement();
                    try (InputStream in = jf.getInputStream(je)) {
                        while (in.read(buf) >= 0) { }
                    }
                    if (je.isDirectory() || je.getName().startsWith("META-INF/"))
                        continue;
                    if (je.getCodeSigners() == null)
                        throw new SecurityException("unsigned entry " + je.getName());
                    n++;
                }
            }
            System.out.println("verified " + n);
            break;
        }
        default:
            throw new IllegalArgumentException(a[0]);
        }
    }
}
