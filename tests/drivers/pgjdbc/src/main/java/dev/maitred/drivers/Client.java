package dev.maitred.drivers;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Collectors;
import org.postgresql.PGStatement;

/** pgjdbc behind HikariCP with pgjdbc's defaults (prepareThreshold=5), as an application sets them up
 * (see ../README.md). */
public final class Client {
    private static final int CLIENTS = Integer.parseInt(System.getenv("CLIENTS"));
    private static final int ROUNDS = Integer.parseInt(System.getenv("ROUNDS"));
    private static final int POOL_SIZE = Integer.parseInt(System.getenv("POOL_SIZE"));
    private static final String TABLE = System.getenv("TABLE");

    public static void main(String[] args) throws Exception {
        HikariConfig config = new HikariConfig();
        config.setJdbcUrl("jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/"
                + System.getenv("PGDATABASE"));
        config.setUsername(System.getenv("PGUSER"));
        config.setPassword(System.getenv("PGPASSWORD"));
        config.setMaximumPoolSize(POOL_SIZE);
        try (HikariDataSource pool = new HikariDataSource(config)) {
            report("concurrent", concurrent(pool));
            try (Connection conn = pool.getConnection()) {
                report("prepared", prepared(conn));
                report("rollback", rollback(conn));
                report("error", error(conn));
            }
            report("awaiting-reconnect", Map.of());
            new BufferedReader(new InputStreamReader(System.in)).readLine();
            report("reconnected", concurrent(pool));
        }
    }

    /** Every round borrows a connection and runs the same statement: each pooled connection passes the
     * prepare threshold and goes on with a named server-side statement. */
    private static Map<String, Object> concurrent(HikariDataSource pool) throws Exception {
        AtomicLong sum = new AtomicLong();
        Set<Integer> pids = java.util.Collections.synchronizedSet(new TreeSet<>());
        ExecutorService workers = Executors.newFixedThreadPool(CLIENTS);
        try {
            List<Future<?>> done = new ArrayList<>();
            for (int w = 0; w < CLIENTS; w++) {
                final int worker = w;
                done.add(workers.submit(() -> {
                    for (int r = 0; r < ROUNDS; r++) {
                        try (Connection conn = pool.getConnection();
                             PreparedStatement ps = conn.prepareStatement(
                                     "SELECT ?::int * ?::int, pg_backend_pid()")) {
                            ps.setInt(1, worker);
                            ps.setInt(2, r);
                            try (ResultSet rs = ps.executeQuery()) {
                                rs.next();
                                sum.addAndGet(rs.getInt(1));
                                pids.add(rs.getInt(2));
                            }
                        }
                    }
                    return null;
                }));
            }
            for (Future<?> f : done) {
                f.get();
            }
        } finally {
            workers.shutdown();
        }
        return Map.of("sum", sum.get(), "pids", new TreeSet<>(pids));
    }

    private static Map<String, Object> prepared(Connection conn) throws SQLException {
        List<Integer> values = new ArrayList<>();
        try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int * 2")) {
            for (int i = 0; i < 8; i++) {
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    values.add(rs.getInt(1));
                }
            }
            return Map.of("values", values, "server_prepared", ps.unwrap(PGStatement.class).isUseServerPrepare());
        }
    }

    private static Map<String, Object> rollback(Connection conn) throws SQLException {
        conn.setAutoCommit(false);
        insert(conn, 1, "kept");
        conn.commit();
        insert(conn, 2, "dropped");
        conn.rollback();
        conn.setAutoCommit(true);
        return Map.of("ids", ids(conn));
    }

    /** The failing statement is a named server-side one by then: used past the threshold beforehand. */
    private static Map<String, Object> error(Connection conn) throws SQLException {
        List<String> sqlstates = new ArrayList<>();
        try (PreparedStatement ps = conn.prepareStatement("SELECT 1 / ?::int")) {
            ps.setInt(1, 1);
            for (int i = 0; i < 6; i++) {
                ps.executeQuery().close();
            }
            conn.setAutoCommit(false);
            insert(conn, 3, "lost");
            ps.setInt(1, 0);
            ps.executeQuery().close();
        } catch (SQLException e) {
            sqlstates.add(e.getSQLState());
        }
        try (Statement st = conn.createStatement()) {
            st.executeQuery("SELECT 1").close();
        } catch (SQLException e) {
            sqlstates.add(e.getSQLState());
        }
        conn.rollback();
        conn.setAutoCommit(true);
        int after;
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
            rs.next();
            after = rs.getInt(1);
        }
        return Map.of("sqlstates", sqlstates, "after", after, "ids", ids(conn));
    }

    private static void insert(Connection conn, int id, String note) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + TABLE + " VALUES (?, ?)")) {
            ps.setInt(1, id);
            ps.setString(2, note);
            ps.executeUpdate();
        }
    }

    private static List<Integer> ids(Connection conn) throws SQLException {
        List<Integer> ids = new ArrayList<>();
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT id FROM " + TABLE
                + " ORDER BY id")) {
            while (rs.next()) {
                ids.add(rs.getInt(1));
            }
        }
        return ids;
    }

    /** One JSON object per line: the values are numbers, booleans, strings and collections of them. */
    private static void report(String step, Map<String, Object> values) {
        StringBuilder out = new StringBuilder("{\"step\": ").append(json(step));
        values.forEach((key, value) -> out.append(", ").append(json(key)).append(": ").append(json(value)));
        System.out.println(out.append('}'));
        System.out.flush();
    }

    private static String json(Object value) {
        if (value instanceof String) {
            return "\"" + ((String) value).replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
        }
        if (value instanceof Collection) {
            return ((Collection<?>) value).stream().map(Client::json).collect(Collectors.joining(", ", "[", "]"));
        }
        return String.valueOf(value);
    }
}
