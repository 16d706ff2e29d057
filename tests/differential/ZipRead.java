// One of the independent readers of the differential harness: what
// java.util.zip.ZipFile sees in a zip (entry names in its enumeration
// order, the bytes getInputStream gives for each). Compiled and run by
// harness.py, once over a whole batch (one JVM start-up).
// Usage: java -cp DIR ZipRead LISTFILE [--stream]   (one zip path per line;
// --stream: java.util.zip.ZipInputStream instead, local headers in file order)
// Output per zip, as libzip-read.c:
//   file <path> / open ok | open error <msg> /
//   entry <UTF-8 name in hex> <size> <sha256 hex> | entry <hex> error <msg> / end
import java.io.BufferedReader;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.util.Enumeration;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;
import java.util.zip.ZipInputStream;

public class ZipRead {
    static String hex(byte[] b) {
        StringBuilder s = new StringBuilder();
        for (byte x : b)
            s.append(String.format("%02x", x & 0xff));
        return s.toString();
    }

    static String clean(Throwable e) {
        String m = e.getClass().getSimpleName() + ": " + e.getMessage();
        return m.replace('\n', ' ').replace('\r', ' ');
    }

    // java.util.zip.ZipInputStream: local headers only, in file order, as
    // streaming readers (JarInputStream) see a zip.
    static void stream(PrintStream out, String path, byte[] buf) {
        try (ZipInputStream zin = new ZipInputStream(
                new java.io.BufferedInputStream(Files.newInputStream(Paths.get(path))))) {
            out.println("open ok");
            ZipEntry ze;
            while (true) {
                try {
                    ze = zin.getNextEntry();
                } catch (Exception e) {
                    out.println("entry - error " + clean(e));
                    break;
                }
                if (ze == null)
                    break;
                String name = hex(ze.getName().getBytes(StandardCharsets.UTF_8));
                try {
                    MessageDigest md = MessageDigest.getInstance("SHA-256");
                    long total = 0;
                    int n;
                    while ((n = zin.read(buf)) > 0) {
                        md.update(buf, 0, n);
                        total += n;
                    }
                    out.println("entry " + name + " " + total + " " + hex(md.digest()));
                } catch (Exception e) {
                    out.println("entry " + name + " error " + clean(e));
                    break;
                }
            }
        } catch (Exception e) {
            out.println("open error " + clean(e));
        }
    }

    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(System.out, false, "UTF-8");
        byte[] buf = new byte[65536];
        boolean streaming = args.length > 1 && args[1].equals("--stream");
        try (BufferedReader r = Files.newBufferedReader(Paths.get(args[0]),
                StandardCharsets.UTF_8)) {
            String path;
            while ((path = r.readLine()) != null) {
                if (path.isEmpty())
                    continue;
                out.println("file " + path);
                if (streaming) {
                    stream(out, path, buf);
                    out.println("end");
                    continue;
                }
                ZipFile zf;
                try {
                    zf = new ZipFile(path);
                } catch (Exception e) {
                    out.println("open error " + clean(e));
                    out.println("end");
                    continue;
                }
                out.println("open ok");
                try {
                    Enumeration<? extends ZipEntry> en = zf.entries();
                    while (en.hasMoreElements()) {
                        ZipEntry ze = en.nextElement();
                        String name = hex(ze.getName().getBytes(StandardCharsets.UTF_8));
                        try (InputStream in = zf.getInputStream(ze)) {
                            MessageDigest md = MessageDigest.getInstance("SHA-256");
                            long total = 0;
                            int n;
                            while ((n = in.read(buf)) > 0) {
                                md.update(buf, 0, n);
                                total += n;
                            }
                            out.println("entry " + name + " " + total + " " + hex(md.digest()));
                        } catch (Exception e) {
                            out.println("entry " + name + " error " + clean(e));
                        }
                    }
                } catch (Exception e) {
                    out.println("entry - error " + clean(e));
                }
                zf.close();
                out.println("end");
            }
        }
        out.flush();
    }
}
